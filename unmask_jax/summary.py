"""``--mode=summary``: the parameter count of every network of a config's system."""
from __future__ import annotations

import json


def summary(config, workdir: str | None) -> dict:
    """Parameter counts of every network; writes WORKDIR/summary.json (not into a weights
    folder) and prints a table."""
    import jax
    from etils import epath

    from unmask_jax import models, systems

    system = systems.build(config)
    shapes = jax.eval_shape(
        lambda: system.init_variables(jax.random.PRNGKey(0), config.data.resolution))
    result = {"system": system.name, "networks": {}}
    for name, v in shapes.items():
        info = {"params": models.count_params(v["params"])}
        parts = {p: models.count_params(v["params"][p]) for p in system.summary_parts(name)
                 if p in v["params"]}
        if parts:
            info["parts"] = parts
        result["networks"][name] = info
    width = max([len(n) for n in result["networks"]] + [
        len(p) + 2 for info in result["networks"].values() for p in info.get("parts", {})])
    print(f"{config.name} (system {system.name}): {system.describe()}, "
          f"{config.data.resolution}x{config.data.resolution}")
    for name, info in result["networks"].items():
        print(f"  {name:<{width}}  {info['params']:>14,d} params")
        for part, count in info.get("parts", {}).items():
            print(f"    {part:<{width - 2}}  {count:>14,d}")
    from unmask_jax.export import io as export_io
    if workdir and not export_io.is_weights_folder(workdir):  # weights folders stay as shipped
        path = epath.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
