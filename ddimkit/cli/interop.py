"""``ddimkit export`` (to a diffusers folder), ``ddimkit convert`` (to a native checkpoint) and
``ddimkit pretrained`` (the models that ship inside the package)."""

from __future__ import annotations

from .common import add_ckpt_args, load_pipeline, writable_dir


def register(sub):
    p = sub.add_parser("export", help="write a model as a diffusers pipeline folder",
                       description="Write a ddimkit model as a diffusers folder (UNet2DModel + DDPMScheduler) that "
                                   "DDPMPipeline.from_pretrained and DDIMPipeline load.")
    add_ckpt_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="turn a diffusers folder or hub id into a native ddimkit checkpoint",
                       description="Read a diffusers unconditional pipeline (folder or hub id) and write it as a "
                                   "ddimkit run folder (safetensors + JSON) that every command takes.")
    add_ckpt_args(p)
    p.add_argument("--out", required=True, help="output run folder")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("pretrained", help="list the models that ship with ddimkit, with their measured quality",
                       description="List the shipped models. Each loads offline by name wherever a checkpoint "
                                   "does: --ckpt pretrained:NAME, dk.load('pretrained:NAME').")
    p.add_argument("--json", action="store_true", help="print the model cards as JSON")
    p.set_defaults(func=cmd_pretrained)


def cmd_export(args):
    from ..diffusers_io import export_diffusers

    out = writable_dir(args.out)
    args.device = "cpu"
    out = export_diffusers(load_pipeline(args), out)
    print(f"wrote a diffusers DDPMPipeline folder to {out}")


def cmd_convert(args):
    from ..checkpoint import save_checkpoint, write_json

    out = writable_dir(args.out)
    if (out / "latest").exists():
        raise ValueError(f"{out} already holds a checkpoint; choose another --out")
    args.device = "cpu"
    pipe = load_pipeline(args)
    config = {**pipe.config, "sampling": pipe.sampling}
    write_json(out / "config.json", config)
    ck = save_checkpoint(out, 0, pipe.model.state_dict(), config)
    print(f"wrote a ddimkit checkpoint to {ck}")


def cmd_pretrained(args):
    import json

    from .. import pretrained

    cards = [pretrained.card(n) for n in pretrained.names()]
    if args.json:
        print(json.dumps(cards, indent=2))
        return
    for c in cards:
        size = (pretrained.resolve(c["name"]) / "model.safetensors").stat().st_size / 1e6
        print(f"{pretrained.PREFIX}{c['name']}: {c['description']}")
        print(f"  network: {c['network']}, {c['params']:,} parameters, {size:.1f} MB (fp16 EMA weights)")
        print(f"  data:    {c['data']} (sha256 {c['data_sha256'][:12]}...)")
        print(f"  trained: {c['step']:,} steps, {c['training']}")
        for label, value in c.get("quality", {}).items():
            print(f"  {label}: {value}")
        print(f"  command: {c['command']}")
