"""Export only the trained weights of a GRPose/ControlNet checkpoint (docs/checkpoints.md §4).

    python scripts/export_adapter.py --config configs/grpose/humanart.yaml \
        --ckpt experiments/grpose/humanart/checkpoints/last.ckpt --out models/grpose_adapter.safetensors \
        [--dtype fp32|fp16|bf16] [--use_ema]

The file (the adapter, plus the UNet decoder when sd_locked is false; the resolved config in its metadata) loads
with any SD1.5-layout base: eval_pose.py / scripts/pose2img.py --ckpt FILE --base_model SD, or
train.py --control_ckpt FILE --base_model SD. Exported in the training dtype it gives the same images bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from grpose.trust import add_trust_argument, honours_trust_flag  # noqa: E402


@honours_trust_flag
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", required=True, help="the model YAML file(s) the checkpoint was trained with")
    p.add_argument("--ckpt", required=True, help="a train.py checkpoint (or any file with this config's keys)")
    p.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--use_ema", action="store_true", help="export the checkpoint's moving average instead")
    add_trust_argument(p)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, as for train.py")
    args = p.parse_args(argv)
    if args.out.suffix != ".safetensors":
        raise SystemExit(f"export_adapter: --out {args.out}: the export is a .safetensors file (name it *.safetensors)")

    import torch
    from omegaconf import OmegaConf

    from grpose.checkpoint import CheckpointError, read_state_dict
    from grpose.config import ConfigError, instantiate, load_config
    from grpose.export import export_trained_weights

    try:
        config = load_config(*args.config, overrides=args.overrides)
        with torch.device("meta"):  # keys and shapes only: no weights are built
            model = instantiate(config.model, "model")
        state_dict = read_state_dict(args.ckpt, config_key="--ckpt", what="a train.py checkpoint", use_ema=args.use_ema)
        metadata = {
            "config": OmegaConf.to_yaml(config, resolve=True),
            "source": str(args.ckpt),
            "use_ema": str(args.use_ema),
        }
        out = export_trained_weights(model, state_dict, args.out, args.dtype, metadata)
    except (ConfigError, CheckpointError, ValueError) as err:
        raise SystemExit(f"export_adapter: {err}") from err
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB, {args.dtype}); load it with --ckpt {out} --base_model <SD1.5 file>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
