# YAML only: the catalog and recipe presets. This file makes `recipes` importable so the YAML ships
# as package data and Hydra can search it as `pkg://recipes`.
