"""Shared by the tools: repo root on sys.path, and user mistakes as one `error:` line."""
import sys
import warnings
from pathlib import Path

# Deprecation chatter from the host libraries' current releases, printed on every run; not actionable
# for a user of this toolkit (the pins in requirements.txt are deliberate).
for _msg in ("`torch.jit.script` is deprecated", "pkg_resources is deprecated", "torch.meshgrid: in an upcoming",
             "is_fx_tracing will return true", "Fail to import ``MultiScaleDeformableAttention``"):
    warnings.filterwarnings("ignore", message=".*" + _msg)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run_cli(main):
    """Call main(); expected user errors print one line and exit 2 instead of a traceback."""
    from mae_transfer.checkpoints import CheckpointError
    from mae_transfer.data import DataError
    from mae_transfer.engine.config import ConfigError
    from mae_transfer.engine.loop import NonFiniteLoss
    from mae_transfer.models import UnknownModel

    try:
        return main()
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (CheckpointError, DataError, ConfigError, UnknownModel) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact", file=sys.stderr)
        sys.exit(130)
