r"""Entry point of a checkout: ``python launch.py [flags]`` is ``onetrans train [flags]``.

  python launch.py                          # onetrans_jax/experiments/default.py, ./workdir
  python launch.py --config onetrans_jax/experiments/pooled_mlp.py --workdir /tmp/run1
  python launch.py --config.train.total_steps=600 --config.model.num_layers=2

Every flag, the multi-host ones and the errors are onetrans_jax/launch.py's (its docstring).
"""

from onetrans_jax import launch

if __name__ == '__main__':
  launch.main()
