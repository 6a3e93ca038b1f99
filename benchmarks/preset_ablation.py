"""One ablation row per difference between a method's presets, on one seed, beside both presets
(docs/saga.md, docs/binary-gaussian.md, "Presets"): with ``--direction add`` (default) the paper preset with one
field set to the segsplat preset's value (what each change buys alone), with ``--direction remove`` the segsplat
preset with one field set back to the paper's (what each change buys given all the others).

Every row is a `segsplat bench` run of its own folder that reuses the seed's scene and RGB splat from a finished
`segsplat bench --workdir BASE` (symlinked), so all rows segment the same Gaussians with the same masks.

    python benchmarks/preset_ablation.py --base outputs/bench --methods saga binary-gaussian --seed 0
    python benchmarks/preset_ablation.py --base outputs/bench --methods binary-gaussian --seed 0 --direction remove
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from segsplat_ns.registry import get_method

KEYS = [("seg_object_miou", "object mIoU"), ("seg_part_miou", "part mIoU"), ("seg_part_min_iou", "part min"),
        ("decomp_object_miou", "decomp. object mIoU"), ("decomp_part_miou", "decomp. part mIoU"), ("psnr", "PSNR")]


def flag_value(value: object) -> str:
    return str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="workdir of a finished `segsplat bench` run")
    parser.add_argument("--methods", nargs="+", default=["saga", "binary-gaussian"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--direction", choices=["add", "remove"], default="add",
                        help="add: paper preset + one segsplat value; remove: segsplat preset - one (paper value)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: BASE/ablation")
    args = parser.parse_args()
    workdir = args.workdir or args.base / "ablation"
    seed_dir = args.base / f"seed{args.seed}"
    if not (seed_dir / "runs" / "rgb" / "wall_seconds.txt").exists():
        print(f"{seed_dir}/runs/rgb is not a finished RGB run: run `segsplat bench --workdir {args.base} --seeds "
              f"{args.seed}` first", file=sys.stderr)
        return 2
    segsplat = str(Path(sys.executable).parent / "segsplat")
    lines = []
    for method in args.methods:
        presets = type(get_method(method).specification.config.pipeline.model).presets
        paper, ours = presets["paper"], presets["segsplat"]
        cases = {"paper": [], "segsplat": []}
        start, other = ("paper", ours) if args.direction == "add" else ("segsplat", paper)
        sign = "+" if args.direction == "add" else "-"
        cases.update({f"{start} {sign} {field.replace('_', '-')} {flag_value(other[field])}":
                      [f"--pipeline.model.{field.replace('_', '-')}", flag_value(other[field])] for field in paper})
        rows = []
        for name, extra in cases.items():
            folder = workdir / method / name.replace(" ", "_").replace("+", "plus").replace("_-_", "_minus_")
            (folder / f"seed{args.seed}" / "runs").mkdir(parents=True, exist_ok=True)
            for link, target in ((folder / f"seed{args.seed}" / "scene", seed_dir / "scene"),
                                 (folder / f"seed{args.seed}" / "runs" / "rgb", seed_dir / "runs" / "rgb")):
                if not link.exists():
                    link.symlink_to(target.resolve(), target_is_directory=True)
            preset = name.split(" ")[0]
            finished = seed_dir / "runs" / f"{method}-{preset}"
            if not extra and (finished / "wall_seconds.txt").exists():  # the bench's own run of this preset
                link = folder / f"seed{args.seed}" / "runs" / f"{method}-{preset}"
                if not link.exists():
                    link.symlink_to(finished.resolve(), target_is_directory=True)
            command = [segsplat, "bench", "--workdir", str(folder), "--seeds", str(args.seed), "--methods", method,
                       "--presets", preset]
            if extra:
                command += ["--extra-args", *extra]
            print("[ablation] " + " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True)
            record = json.loads((folder / "bench.json").read_text())
            row = next(r for r in record["rows"] if r["method"] == f"{method} ({preset})")
            rows.append((name, row))
        lines.append(f"**{method}**, seed {args.seed}:\n")
        lines.append("| run | " + " | ".join(label for _, label in KEYS) + " |")
        lines.append("|---|" + "---|" * len(KEYS))
        for name, row in rows:
            cells = [f"{row[key]:.3f}" if key != "psnr" else f"{row[key]:.2f}" for key, _ in KEYS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    table = "\n".join(lines)
    (workdir / f"ablation-{args.direction}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
