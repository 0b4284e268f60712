"""`sgpo world prepare`: pre-train (or find in the cache) the strategy world's model and write
its problem files, so `sgpo train` and `sgpo eval` use them like any model and data set."""

from __future__ import annotations

import argparse
from typing import Any

SIZES = {"train": 256, "heldout": 64, "combos": 64}
EXTRA_SIZES = {"valid": 64, "transfer": 64}  # the pair world's further splits


def register(sub: Any) -> None:
    p = sub.add_parser("world", help="the strategy world: a small model and problems where strategies help")
    wsub = p.add_subparsers(dest="world_command", metavar="ACTION")
    wsub.required = True
    prep = wsub.add_parser("prepare", help="pre-train the world model (cached) and write its problem files")
    prep.add_argument("--output-dir", default="data/world", help="where train/heldout/combos.jsonl go")
    prep.add_argument("--seed", type=int, default=0, help="which problems are drawn (default: 0)")
    prep.add_argument("--world", choices=("single", "pair"), default="single",
                      help="single: a keyword names the procedure (default); pair: an order word and a shift word, "
                           "with the valid and transfer splits too")
    prep.add_argument("--world-seed", type=int, default=0,
                      help="the world's keyword -> procedure map and pre-training seed (default: 0)")
    prep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a world dial (a WorldSpec field, repeatable), e.g. trace_style=T2, strategy_wrong_share=0.3, "
                           "prior_bias=0.25 (docs/strategy-world.md: the claims' dials); pre-training dials build "
                           "their own model")
    for split, n in {**SIZES, **EXTRA_SIZES}.items():
        prep.add_argument(f"--{split}", type=int, default=n, help=f"{split} problems (default: {n})")
    prep.set_defaults(func=prepare)


def write_problem_files(output_dir: str, seed: int, sizes: dict[str, int], spec: Any = None) -> dict[str, str]:
    """Each split of ``spec`` (default: the single world, map 0) in ``sizes`` as SPLIT.jsonl."""
    from pathlib import Path

    from sgpo.io import write_jsonl
    from sgpo.world.tasks import WorldSpec, make_problems

    spec = spec or WorldSpec()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in sizes.items():
        paths[split] = str(out / f"{split}.jsonl")
        write_jsonl(paths[split], make_problems(spec, n, seed=seed, split=split))  # type: ignore[arg-type]
    return paths


def prepare(args: argparse.Namespace) -> int:
    from sgpo.world.pretrain import seeded_world, world_model_path

    try:
        world = seeded_world(args.world, args.world_seed, tasks=parse_dials(args.set))
    except ValueError as e:  # a dial value the world refuses (WorldSpec's checks)
        raise SystemExit(f"sgpo world prepare: {e}") from None
    model = world_model_path(world)
    splits = [s for s in {**SIZES, **EXTRA_SIZES} if s in world.tasks.available_splits()]
    paths = write_problem_files(args.output_dir, args.seed, {s: getattr(args, s) for s in splits}, world.tasks)
    alias = "  (also reachable as model.name_or_path: strategy-world)" if world.key() == seeded_world().key() else ""
    print(f"model: {model}{alias}")
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def parse_dials(items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` items as WorldSpec overrides, each value converted to its field's type
    (a clear error naming the item otherwise)."""
    from dataclasses import fields

    from sgpo.world.tasks import WorldSpec

    types = {f.name: type(getattr(WorldSpec(), f.name)) for f in fields(WorldSpec)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in types or types[name] not in (int, float, str):
            settable = ", ".join(n for n, t in types.items() if t in (int, float, str) and n != "map_seed")
            raise SystemExit(f"sgpo world prepare: --set {item!r}: expected FIELD=VALUE with FIELD one of {settable}")
        try:
            out[name] = types[name](value)
        except ValueError:
            raise SystemExit(f"sgpo world prepare: --set {item!r}: {value!r} is not of type {types[name].__name__}") from None
    return out
