"""A browser demo: a pose (a photo, a skeleton image or a COCO-keypoints JSON) and a prompt -> generated images.

    pip install -r requirements-demo.txt
    python scripts/demo.py                       # the lab model (models/lab, no download), http://127.0.0.1:7860
    python scripts/demo.py --config configs/grpose/humanart.yaml --ckpt CKPT \
        --estimator_config configs/eval/metrics.yaml [--base_model SD] [--use_ema]

A photo is read by the config's pose estimator (the project's bottom-up pipeline); the skeleton and every generated
image are shown and downloadable. Bad input (a file that is not an image, a photo with nobody in it) is reported in
the page.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pose2img import _cuda, fit_pose, hint_batch, load_pose, square_crop  # noqa: E402  (scripts/ is this script's folder)

from grpose.trust import add_trust_argument, honours_trust_flag  # noqa: E402

log = logging.getLogger("grpose.demo")
KINDS = ("skeleton image", "photo (detect the pose)", "keypoints JSON")
LAB = {"config": ["configs/lab/grpose.yaml"], "estimator_config": "configs/lab/eval.yaml"}


class PoseToImage:
    """The model, the pose estimator (built on first use) and one generation call."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from grpose.config import load_config
        from grpose.evaluation.model_loading import load_model

        self.args = args
        self.config = load_config(*args.config)
        self.size = args.size or int(self.config.data.params.validation.params.get("image_size", 512))
        self.device = torch.device(args.device)
        if args.ckpt:
            self.model = load_model(self.config, ckpt=args.ckpt, config_files=args.config, device=self.device,
                                    base_model=args.base_model, use_ema=args.use_ema)  # fmt: skip
        else:  # the lab model: its frozen base (base_weights) and the adapter as configured
            import train
            from grpose.config import instantiate

            self.model = instantiate(self.config.model, "model")
            train.load_base_weights(self.model, list(self.config.base_weights))
            self.model = self.model.to(self.device).eval()
        self._estimator = None

    def estimator(self):
        from grpose.config import instantiate, load_config

        if self._estimator is None:
            node = load_config(self.args.estimator_config).pose_estimator
            self._estimator = instantiate(node, "pose_estimator")
        return self._estimator

    def hint_from(self, path: Path, kind: str) -> np.ndarray:
        """The skeleton image (size, size, 3) uint8 for an uploaded file; ValueError with a message otherwise."""
        from PIL import Image, UnidentifiedImageError

        if kind == "keypoints JSON":
            try:
                json.loads(path.read_text())
                return load_pose(path, self.size)[0]
            except (SystemExit, ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path.name}: not a COCO-keypoints JSON ({err})") from err
        try:
            pil_image = Image.open(path).convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{path.name} is not an image") from err
        if kind == "skeleton image":
            return square_crop(pil_image, self.size)
        image = np.asarray(pil_image)
        people = self.estimator()([image])[0]
        keypoints = np.asarray(people["keypoints"], dtype=np.float32).reshape(-1, 17, 3)  # (P, 17, 3)
        keypoints = keypoints[np.asarray(people["scores"]) >= self.args.person_score]
        if len(keypoints) == 0:
            raise ValueError(f"no person found in {path.name} (no detection scored {self.args.person_score} or more)")
        return fit_pose(keypoints, self.size)[0]

    def generate(self, path: Path, kind: str, prompt: str, steps: int, guidance: float, seed: int, num: int):
        """Skeleton (size, size, 3) and ``num`` generated images, uint8."""
        import torch

        hint_rgb = self.hint_from(path, kind)
        hint = hint_batch(hint_rgb, num)
        generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((num, self.model.latent_channels, self.size // 8, self.size // 8), generator=generator)
        with torch.no_grad():
            images = self.model.sample(hint.to(self.device), [prompt] * num, noise=noise.to(self.device),
                                       num_steps=int(steps), guidance_scale=float(guidance))  # fmt: skip
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return hint_rgb, list(images)


def build_app(engine: PoseToImage, default_steps: int):
    import gradio as gr

    def run(file, kind, prompt, steps, guidance, seed, num):
        if file is None:
            raise gr.Error("Upload a pose first (a skeleton image, a photo or a keypoints JSON).")
        try:
            hint, images = engine.generate(Path(file), kind, prompt, steps, guidance, seed, num)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        return hint, images

    with gr.Blocks(title="GRPose demo") as app:
        gr.Markdown("# GRPose: pose-guided image generation")
        with gr.Row():
            with gr.Column():
                pose_file = gr.File(label="Pose file", elem_id="pose_file")
                kind = gr.Radio(list(KINDS), value=KINDS[0], label="The file is a")
                prompt = gr.Textbox(value="a photo of one person dancing", label="Prompt", elem_id="prompt")
                steps = gr.Slider(1, 100, value=default_steps, step=1, label="DDIM steps")
                guidance = gr.Slider(1.0, 15.0, value=float(engine.model.guidance_scale), label="Guidance scale")
                seed = gr.Number(value=0, precision=0, label="Seed")
                num = gr.Slider(1, 8, value=2, step=1, label="Images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                skeleton = gr.Image(label="Skeleton", type="numpy", elem_id="skeleton")
                gallery = gr.Gallery(label="Generated", elem_id="gallery", format="png")
        button.click(run, [pose_file, kind, prompt, steps, guidance, seed, num], [skeleton, gallery])
    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=None, help="model YAML file(s) (default: the lab model)")
    p.add_argument("--ckpt", default=None, help="trained checkpoint (default: the lab base with a fresh adapter)")
    p.add_argument("--base_model", default=None)
    p.add_argument("--use_ema", action="store_true")
    p.add_argument("--estimator_config", default=None, help="YAML with a pose_estimator node (photos)")
    p.add_argument(
        "--person_score", type=float, default=0.2, help="photos: detections scoring less are not people (0..1)"
    )
    p.add_argument("--size", type=int, default=None, help="image size (default: the config's validation size)")
    p.add_argument("--steps", type=int, default=20, help="default DDIM steps in the page")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    add_trust_argument(p)
    return p


def launch(argv: list[str] | None = None, block: bool = True):
    """Build and start the server; with ``block=False`` return the running app (tests)."""
    args = build_parser().parse_args(argv)
    if args.config is None:
        args.config = LAB["config"]
        args.estimator_config = args.estimator_config or LAB["estimator_config"]
    if args.estimator_config is None:
        args.estimator_config = "configs/eval/metrics.yaml"
    app = build_app(PoseToImage(args), args.steps)
    app.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=not block)
    return app


@honours_trust_flag
def main(argv: list[str] | None = None) -> int:
    from grpose.cli import configure_logging

    configure_logging("%(levelname)s %(name)s: %(message)s")
    launch(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
