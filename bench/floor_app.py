"""The cheapest Hydra 1.3 app: no config, a job that returns at once. sweep_bench.py times its
multirun to show what Hydra itself costs per job, below which no Hydra app can go."""

import hydra


@hydra.main(config_path=None, config_name=None, version_base="1.3")
def main(cfg) -> None:
    return None


if __name__ == "__main__":
    main()
