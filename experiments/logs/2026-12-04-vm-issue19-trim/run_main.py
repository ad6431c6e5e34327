"""A training run as ``python -m alexnet_jax.main`` starts it, optionally compiled by the first
call (the step's ``compile_ahead`` made a no-op): ``python run_main.py ahead|first-call FLAGS``.
Run with the repository on PYTHONPATH."""

import sys

from alexnet_jax import main, steps

if __name__ == '__main__':
    if sys.argv[1] == 'first-call':
        steps.compile_ahead = lambda *args: None
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    main.run()
