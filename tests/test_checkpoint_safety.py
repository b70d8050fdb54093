"""Loading weight files never runs code from them unless trusted (grpose.checkpoint, grpose.safe_pickle).

README "Loading weight files safely" documents the rules.

Every CLI that takes a weight file gets a checkpoint whose pickle carries a ``__reduce__`` payload (it would write a
marker file) next to a valid state dict: the payload never runs and the refusal names the callable. Legitimate
legacy pickles (Lightning 1.6 hyper-parameters with OmegaConf/Lightning objects, SD-style callback keys, mmcv
metadata, the legacy torch format) still give their state dict; our own resume checkpoints load without opt-in,
also through Lightning's resume path.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from grpose.checkpoint import CheckpointError, UntrustedCheckpointError, read_checkpoint, read_state_dict
from grpose.config import instantiate, load_config
from grpose.data.synthetic import make_synthetic_dataset
from grpose.trust import TRUST_ENV, trusting_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/grpose/tiny.yaml")
TINY_METRICS = str(ROOT / "configs/eval/tiny.yaml")


class Payload:
    """Pickles as ``exec(code)``: unpickling it without restriction writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",))


class SystemPayload(Payload):
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_payload_ckpt(path: Path, state_dict: dict, marker: Path, payload: type = Payload, **extra) -> Path:
    torch.save({"state_dict": dict(state_dict), "hyper_parameters": {"x": payload(marker)}, **extra}, path)
    return path


@pytest.fixture(autouse=True)
def _no_trust(monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    make_synthetic_dataset(root / "data", 6, seed=3)
    model = instantiate(load_config(TINY).model, "model")
    return root, {k: v.clone() for k, v in model.state_dict().items()}


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------
# the loader itself


@pytest.mark.parametrize(("payload", "name"), [(Payload, "builtins.exec"), (SystemPayload, "posix.system")])
@pytest.mark.parametrize("legacy_format", [False, True])
def test_payload_is_refused_naming_the_callable_and_runs_only_when_trusted(tmp_path, payload, name, legacy_format):
    marker = tmp_path / "marker"
    sd = {"w": torch.randn(2, 3)}
    path = tmp_path / "bad.ckpt"
    torch.save(
        {"state_dict": sd, "meta": {"x": payload(marker)}}, path, _use_new_zipfile_serialization=not legacy_format
    )
    with pytest.raises(UntrustedCheckpointError, match=rf"(?s)calls {name}.*--trust_checkpoint.*{TRUST_ENV}=1") as err:
        read_state_dict(path)
    assert err.value.name == name and not marker.exists()
    with pytest.raises(UntrustedCheckpointError, match=name):
        read_checkpoint(path)
    assert not marker.exists()
    # the explicit opt-in really unpickles everything (and so runs the payload)
    if payload is Payload:
        with trusting_checkpoints(True):
            assert set(read_state_dict(path)) == {"w"}
        assert marker.read_text() == "payload ran"
        assert TRUST_ENV not in os.environ


@pytest.mark.parametrize("target", [b"torch\nTensor", b"pathlib\nPath", b"grpose.nothing\nThing"])
def test_pickle_cannot_set_attributes_of_a_class(target):
    """BUILD on a class object would patch that (real, allowlisted) class for the whole process: refused."""
    import io

    from grpose import safe_pickle

    # GLOBAL target; state (None, {'__repr__': torch.float32}); BUILD
    data = b"\x80\x02c" + target + b"\nq\x00N}q\x01X\x08\x00\x00\x00__repr__q\x02ctorch\nfloat32\nq\x03s\x86q\x04b."
    before = torch.Tensor.__repr__
    with pytest.raises(safe_pickle.UnsafePickleError, match="sets attributes of"):
        safe_pickle.RestrictedUnpickler(io.BytesIO(data)).load()
    assert torch.Tensor.__repr__ is before and pathlib_repr_untouched()


def pathlib_repr_untouched() -> bool:
    import pathlib

    return "__repr__" not in vars(pathlib.PurePath) or callable(vars(pathlib.PurePath)["__repr__"])


def _fake_modules(monkeypatch, names: dict[str, list[str]]) -> dict[str, type]:
    """Importable stand-ins for classes of packages we do not install (only needed to *write* the pickle)."""
    classes = {}
    for module_name, class_names in names.items():
        parts = module_name.split(".")
        for i in range(1, len(parts) + 1):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        module = sys.modules[module_name]
        for class_name in class_names:
            base = dict if class_name == "AttributeDict" else object
            cls = type(class_name, (base,), {"__module__": module_name})
            setattr(module, class_name, cls)
            classes[class_name] = cls
    return classes


def test_lightning_16_style_checkpoint_with_metadata_still_gives_its_state_dict(tmp_path, monkeypatch, tiny):
    _, sd = tiny
    classes = _fake_modules(
        monkeypatch,
        {
            "pytorch_lightning.utilities.parsing": ["AttributeDict"],
            "pytorch_lightning.callbacks.model_checkpoint": ["ModelCheckpoint"],
        },
    )
    hparams = classes["AttributeDict"](
        config=OmegaConf.create({"model": {"lr": 1e-5, "layers": [1, 4, 7, 10]}, "name": "grpose"}),
        args=argparse.Namespace(lr=1e-5, gpus=8),
        logdir=Path("/logs/run"),
    )
    ckpt = {
        "epoch": 35,
        "global_step": 123456,
        "pytorch-lightning_version": "1.6.5",
        "state_dict": collections.OrderedDict(sd),
        "callbacks": {classes["ModelCheckpoint"]: {"best_model_score": np.float64(0.25), "dirpath": "/x"}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-5}]}],
        "lr_schedulers": [],
        "native_amp_scaling_state": {"scale": 65536.0, "_growth_tracker": 0},
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 36}}}},
        "rng": np.arange(4, dtype=np.uint32),
    }
    path = tmp_path / "lightning16.ckpt"
    torch.save(ckpt, path)
    legacy = tmp_path / "lightning16_legacy.ckpt"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    for name in list(sys.modules):  # reading must not need (or import) any of these
        if name.startswith("pytorch_lightning"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(Exception):  # noqa: B017 (torch's own weights-only loader refuses the file)
        torch.load(path, weights_only=True)
    for p in (path, legacy):
        loaded = read_state_dict(p)
        assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert not any(name.startswith("pytorch_lightning") for name in sys.modules)
    # as a whole checkpoint (what a resume needs) it is refused, naming the class it would need
    with pytest.raises(UntrustedCheckpointError, match=r"holds an object of class pytorch_lightning\.\w+"):
        read_checkpoint(path)
    # and it loads strictly into the model
    from grpose.checkpoint import load_into

    model = instantiate(load_config(TINY).model, "model")
    assert load_into(model, loaded, strict=True).ok


def test_mmcv_and_sd_style_files_load(tmp_path):
    sd = collections.OrderedDict([("backbone.conv.weight", torch.randn(4, 3, 3, 3))])
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # what nn.Module.state_dict() attaches
    mmcv = {
        "meta": {"mmcv_version": "1.3.8", "time": "Sun Aug 16", "epoch": 210, "CLASSES": ("person",), "seed": None},
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0015, "betas": (0.9, 0.999)}]},
    }
    torch.save(mmcv, tmp_path / "mm.pth", _use_new_zipfile_serialization=False)
    assert list(read_state_dict(tmp_path / "mm.pth")) == ["backbone.conv.weight"]


def test_state_dict_holding_an_unknown_object_is_refused(tmp_path, monkeypatch):
    classes = _fake_modules(monkeypatch, {"evil.module": ["Gadget"]})
    torch.save({"state_dict": {"w": torch.zeros(1), "g": classes["Gadget"]()}}, tmp_path / "x.ckpt")
    monkeypatch.delitem(sys.modules, "evil.module")
    with pytest.raises(UntrustedCheckpointError, match=r"state dict holds an object of class evil\.module\.Gadget"):
        read_state_dict(tmp_path / "x.ckpt")


# --------------------------------------------------------------------------------------------------------------
# every CLI that takes a weight file


def test_eval_pose_ckpt_and_base_model_refuse_the_payload(tmp_path, tiny):
    import eval_pose
    from grpose.checkpoint import save_state_dict

    root, sd = tiny
    marker = tmp_path / "marker"
    bad = write_payload_ckpt(tmp_path / "bad.ckpt", sd, marker)
    good = save_state_dict(sd, tmp_path / "good.ckpt")
    base = [
        "--config_model", TINY, "--config_metrics", TINY_METRICS, "--map_file",
        str(root / "data/mapping_file_validation.json"), "--ddim_steps", "1", "--batch_size", "1", "--limit", "1",
        "--accelerator", "cpu", "--run", "r",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match=r"(?s)builtins\.exec.*--trust_checkpoint"):
        eval_pose.main([*base, "--ckpt", str(bad), "--outdir", str(tmp_path / "o1")])
    with pytest.raises(SystemExit, match=r"(?s)builtins\.exec.*--trust_checkpoint"):
        eval_pose.main([*base, "--ckpt", str(good), "--base_model", str(bad), "--outdir", str(tmp_path / "o2")])
    assert not marker.exists()


def test_train_control_ckpt_and_resume_refuse_the_payload(tmp_path, tiny):
    import train

    root, sd = tiny
    marker = tmp_path / "marker"
    bad = write_payload_ckpt(tmp_path / "bad.ckpt", sd, marker)
    common = ["--config", TINY, "--outdir", str(tmp_path / "exp"), "--accelerator", "cpu", "--max_steps", "1"]
    common += [f"data.params.train.params.mapping_file={root}/data/mapping_file_training.json"]
    common += [f"data.params.train.params.base_dir={root}/data", "synthetic_data=null", "trainer.progress_bar=false"]
    with pytest.raises(SystemExit, match=r"(?s)--control_ckpt.*builtins\.exec.*--trust_checkpoint"):
        train.main([*common, "--control_ckpt", str(bad)])
    with pytest.raises(SystemExit, match=r"(?s)--resume.*builtins\.exec.*--trust_checkpoint"):
        train.main([*common, "--resume", str(bad)])
    assert not marker.exists()


def test_prepare_weights_refuses_the_payload(tmp_path, tiny, capsys):
    import prepare_weights

    _, sd = tiny
    marker = tmp_path / "marker"
    bad = write_payload_ckpt(tmp_path / "v1-5-pruned.ckpt", sd, marker)
    with pytest.raises(SystemExit):
        prepare_weights.main([str(bad), TINY, str(tmp_path / "out.ckpt")])
    assert "builtins.exec" in capsys.readouterr().err and not marker.exists()
    assert not (tmp_path / "out.ckpt").exists()


def test_pose2img_ckpt_and_base_model_refuse_the_payload(tmp_path, tiny):
    from grpose.checkpoint import save_state_dict

    root, sd = tiny
    marker = tmp_path / "marker"
    bad = write_payload_ckpt(tmp_path / "bad.ckpt", sd, marker)
    good = save_state_dict(sd, tmp_path / "good.ckpt")
    pose = sorted((root / "data/pose").rglob("*.npz"))[0]
    pose2img = _load_script("pose2img")
    common = ["--config", TINY, "--pose", str(pose), "--prompt", "x", "--steps", "1", "--device", "cpu"]
    with pytest.raises(SystemExit, match=r"builtins\.exec"):
        pose2img.main([*common, "--ckpt", str(bad), "--out", str(tmp_path / "o1")])
    with pytest.raises(SystemExit, match=r"builtins\.exec"):
        pose2img.main([*common, "--ckpt", str(good), "--base_model", str(bad), "--out", str(tmp_path / "o2")])
    assert not marker.exists()


def test_detect_poses_checkpoint_refuses_the_payload(tmp_path):
    from grpose.pose.estimator import build_pose_model

    marker = tmp_path / "marker"
    sd = build_pose_model("higherhrnet_w18_small").state_dict()
    bad = write_payload_ckpt(tmp_path / "hrnet.pth", sd, marker, payload=SystemPayload)
    (tmp_path / "imgs").mkdir()
    detect_poses = _load_script("detect_poses")
    args = [str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--arch", "higherhrnet_w18_small"]
    with pytest.raises(SystemExit, match=r"(?s)--checkpoint.*posix\.system.*--trust_checkpoint"):
        detect_poses.main([*args, "--checkpoint", str(bad)])
    assert not marker.exists()


def test_pose_loss_network_checkpoint_refuses_the_payload(tmp_path):
    from grpose.pose.features import PoseFeatureNetwork

    marker = tmp_path / "marker"
    net = PoseFeatureNetwork(allow_random_init=True, width_mult=0.25)
    sd = {f"backbone.{k}": v for k, v in net.backbone.state_dict().items()}
    bad = write_payload_ckpt(tmp_path / "mobilenetv2.pth", sd, marker)
    with pytest.raises(CheckpointError, match=r"builtins\.exec"):
        PoseFeatureNetwork(checkpoint=bad, width_mult=0.25)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------
# our own resume checkpoints, through check_resume and through Lightning's own loading


def test_own_resume_checkpoint_loads_safely_and_lightning_resumes_through_safe_io(tmp_path, tiny, monkeypatch):
    import train
    from grpose.callbacks import SafeCheckpointIO

    root, _ = tiny
    common = ["--config", TINY, "--outdir", str(tmp_path / "exp"), "--accelerator", "cpu", "-s", "3"]
    common += [f"data.params.train.params.mapping_file={root}/data/mapping_file_training.json"]
    common += [f"data.params.train.params.base_dir={root}/data", "data.params.num_workers=0", "synthetic_data=null"]
    common += ["trainer.progress_bar=false", "trainer.log_frequency=0"]
    train.main([*common, "--max_steps", "1", "--name", "a"])
    last = tmp_path / "exp/grpose/a/checkpoints/last.ckpt"
    ckpt = read_checkpoint(last)  # no opt-in needed: callbacks, optimizer and RNG states are plain
    assert "optimizer_states" in ckpt and any("rng_states" in v for v in ckpt["callbacks"].values())

    loads = []
    original = SafeCheckpointIO.load_checkpoint

    def counting(self, path, *args, **kwargs):
        loads.append(Path(path))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(SafeCheckpointIO, "load_checkpoint", counting)
    train.main([*common, "--max_steps", "2", "--resume", str(last)])
    assert loads == [last]

    # a crafted resume file that slips past check_resume is refused by Lightning's (safe) loading too
    marker = tmp_path / "marker"
    crafted = dict(ckpt)
    crafted["callbacks"] = {**ckpt["callbacks"], "Payload": {"x": Payload(marker)}}
    bad = tmp_path / "exp/grpose/a/checkpoints/crafted.ckpt"
    torch.save(crafted, bad)
    with pytest.raises(SystemExit, match=r"builtins\.exec"):
        train.main([*common, "--max_steps", "3", "--resume", str(bad)])
    monkeypatch.setattr(train, "check_resume", lambda *a: None)
    with pytest.raises(UntrustedCheckpointError, match=r"builtins\.exec"):
        train.main([*common, "--max_steps", "3", "--resume", str(bad)])
    assert not marker.exists()
