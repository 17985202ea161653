"""The learner presets (YAML files beside this one), installed as the package data of ``online_gim.presets``.

``pyproject.toml`` maps this folder to the package ``online_gim.presets``; read them through
:func:`online_gim.config.load_preset` and :func:`online_gim.config.preset_names`.
"""
