"""The strategy world: a small synthetic task family and a small model pre-trained from
scratch on it, where SGPO's premise holds by construction (the model follows a strategy when
given one but must guess the procedure without it). It is a data and model source like any
other: a model folder (the ``strategy-world`` alias, registered with the model loader when
this package is imported: :func:`sgpo.models.register_built_model`) and problem files in
the format :func:`sgpo.data.load_problems` reads (``sgpo world prepare``). Modules:
:mod:`~sgpo.world.tasks` (problems, procedures, strategies), :mod:`~sgpo.world.tokenizer`,
:mod:`~sgpo.world.pretrain` (supervised pre-training and its cache)."""

from pathlib import Path

from sgpo.models import register_built_model


def _strategy_world() -> Path:
    from sgpo.world.pretrain import world_model_path

    return world_model_path()


register_built_model("strategy-world", _strategy_world)
