"""The registered sizes, one table: the encoders (fine-tuning, `vit_*`), the decoders, and the MAEs made of
them (`mae_vit_*_dec*`). The factories read it, and so does the reader of foreign checkpoints, whose head
counts cannot be seen in their tensors (a 768-wide ViT could have 12 heads or 6)."""

ENCODERS = {
    "vit_tiny_patch8": dict(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3),    # 64-px CPU demo
    "vit_small_patch4": dict(img_size=28, patch_size=4, embed_dim=384, depth=12, num_heads=6),   # 28/32-px sets
    "vit_base_patch16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    # ViT-g/14 (Zhai et al. 2022; MAWS's MAE ViT-g): MLP 6144 = 1408 * 48/11. 1.0B encoder parameters
    "vit_giant_patch14": dict(patch_size=14, embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    # ViT-2B/14 (MAWS, Singh et al. 2023: MAE ViT-2B/14, 87.8 % IN-1k fine-tuned): MLP 4x = 10240. 1.9B
    "vit_2b_patch14": dict(patch_size=14, embed_dim=2560, depth=24, num_heads=32),
}
DECODERS = {  # the paper's decoder: 512 wide, 8 blocks (Table 1a-b); narrower ones for the CPU sizes
    "dec128d2b": dict(decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "dec256d4b": dict(decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "dec512d8b": dict(decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}
_PAIRS = [("vit_tiny_patch8", "dec128d2b"), ("vit_small_patch4", "dec256d4b"), ("vit_base_patch16", "dec512d8b"),
          ("vit_large_patch16", "dec512d8b"), ("vit_huge_patch14", "dec512d8b"), ("vit_giant_patch14", "dec512d8b"),
          ("vit_2b_patch14", "dec512d8b")]
ARCHS = {f"mae_{enc}_{dec}": {**ENCODERS[enc], **DECODERS[dec]} for enc, dec in _PAIRS}
SHORT = {full.split("_dec")[0]: full for full in ARCHS}  # mae_vit_base_patch16 -> ..._dec512d8b
