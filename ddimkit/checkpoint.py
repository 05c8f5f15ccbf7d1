"""Native checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A training run's folder looks like::

    runs/NAME/
      config.json                  the run's full configuration
      latest                       name of the newest complete checkpoint (replaced atomically)
      checkpoints/step-00001000/
        model.safetensors          weights
        ema.safetensors            EMA weights (when training keeps them)
        guide.safetensors          the early EMA weights that autoguidance samples with (when kept)
        optimizer.safetensors      optimizer tensors, for --resume
        state.json                 step, optimizer hyper-parameters, config

A checkpoint folder is written under a temporary name and renamed into place, and only then does
``latest`` move to it, so a kill at any moment leaves the previous checkpoint intact and pointed to.
No pickle is ever read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "resolve_checkpoint", "read_checkpoint", "mean_weights", "load_safetensors",
           "write_json", "read_json", "atomic_write", "optimizer_tensors", "optimizer_from_tensors", "FORMAT"]

FORMAT = "ddimkit-checkpoint-v1"


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file over ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_json(path: str | Path, obj) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def load_safetensors(path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a truncated or corrupt file into one clear ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is corrupt or truncated ({e})") from None


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None):
    # safetensors wants contiguous, unshared CPU tensors.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=metadata)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON (hyper-parameters)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Rebuild an optimizer state_dict from :func:`optimizer_tensors`' two halves."""
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, step: int, model: dict[str, torch.Tensor], config: dict,
                    ema: dict[str, torch.Tensor] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None,
                    keep: int = 2, guide: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``checkpoints/step-<8-digit step>`` atomically, point ``latest`` at it, and prune old ones.

    Returns the checkpoint folder.
    """
    run_dir = Path(run_dir)
    ckpts = run_dir / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=ckpts))
    try:
        _save_tensors(tmp / "model.safetensors", model, {"format": FORMAT})
        if ema is not None:
            _save_tensors(tmp / "ema.safetensors", ema, {"format": FORMAT})
        if guide is not None:
            _save_tensors(tmp / "guide.safetensors", guide, {"format": FORMAT})
        state = {"format": FORMAT, "step": step, "config": config, **(extra or {})}
        if optimizer is not None:
            tensors, meta = optimizer_tensors(optimizer)
            _save_tensors(tmp / "optimizer.safetensors", tensors, {"format": FORMAT})
            state["optimizer"] = meta
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = ckpts / name
        if final.exists():  # the same step written again (a resumed run): swap the old one out first
            trash = Path(tempfile.mkdtemp(prefix=f".old-{name}.", dir=ckpts))
            os.replace(final, trash / name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(ckpts)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(run_dir / "latest", lambda p: p.write_text(name + "\n"))
    _prune(ckpts, keep, final)
    return final


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """A run's complete and incomplete ``checkpoints/step-*`` folders, oldest first."""
    ckpts = Path(run_dir) / "checkpoints"
    return sorted(p for p in ckpts.iterdir() if p.is_dir() and p.name.startswith("step-")) if ckpts.is_dir() else []


def _prune(ckpts: Path, keep: int, current: Path):
    done = checkpoint_dirs(ckpts.parent)
    for old in done[:-keep] if keep > 0 else []:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in ckpts.glob(".*"):  # temp folders of a killed writer
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (follows ``latest``) or a checkpoint folder → the checkpoint folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint or run folder: {path}")
    if (path / "state.json").is_file():
        return path
    latest = path / "latest"
    if latest.is_file():
        target = path / "checkpoints" / latest.read_text().strip()
        if (target / "state.json").is_file():
            return target
        raise ValueError(f"{latest} points to {target}, which is not a complete checkpoint")
    raise ValueError(f"{path} is not a ddimkit checkpoint (no state.json, no 'latest' file)")


def read_checkpoint(path: str | Path, ema: bool = True, optimizer: bool = False, device="cpu") -> dict:
    """Load a native checkpoint: ``{"dir", "step", "config", "model", "ema", "guide", "optimizer"}``.

    ``model`` holds the EMA weights when ``ema`` is true and the checkpoint has them; the raw weights are
    then under ``raw``. ``guide`` holds autoguidance's guide (:mod:`ddimkit.autoguidance`) or None.
    ``optimizer`` (a state_dict) is read only when asked for.
    """
    ckpt = resolve_checkpoint(path)
    state = read_json(ckpt / "state.json")
    if state.get("format") != FORMAT:
        raise ValueError(f"{ckpt} has unknown format {state.get('format')!r} (expected {FORMAT})")
    out = {"dir": ckpt, "step": state["step"], "config": state["config"], "state": state}
    out["raw"] = load_safetensors(ckpt / "model.safetensors", device)
    has_ema = (ckpt / "ema.safetensors").is_file()
    out["ema"] = load_safetensors(ckpt / "ema.safetensors", device) if has_ema else None
    out["model"] = out["ema"] if (ema and has_ema) else out["raw"]
    has_guide = (ckpt / "guide.safetensors").is_file()
    out["guide"] = load_safetensors(ckpt / "guide.safetensors", device) if has_guide else None
    if optimizer:
        if not (ckpt / "optimizer.safetensors").is_file() or "optimizer" not in state:
            raise ValueError(f"{ckpt} has no optimizer state to resume from")
        out["optimizer"] = optimizer_from_tensors(load_safetensors(ckpt / "optimizer.safetensors", device),
                                                  state["optimizer"])
    return out


def mean_weights(paths, ema: bool = True) -> dict[str, torch.Tensor]:
    """The mean of several checkpoints' weights (their EMA weights when ``ema``): a longer average of one run,
    made after the fact. Summed in float64, returned in the stored dtypes."""
    states = [read_checkpoint(p, ema=ema)["model"] for p in paths]
    if not states:
        raise ValueError("no checkpoints to average")
    return {k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype) for k, v in states[0].items()}
