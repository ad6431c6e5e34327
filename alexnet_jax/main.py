"""Trains and evaluates AlexNet.

    python -m alexnet_jax.main --config configs/imagenet.py --workdir DIR [--config.FIELD=VALUE]

Running the same command again in the same workdir resumes from its newest checkpoint. On
several hosts, start one process per host: on TPU pods and SLURM the distributed runtime finds
its peers by itself; elsewhere pass --coordinator_address, --num_processes and --process_id.
"""

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import xla_cpu
from alexnet_jax.config_checks import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    None,
    'Config file (configs/*.py); override fields with --config.FIELD=VALUE.',
    lock_config=True,
)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes in the job.')
flags.DEFINE_integer('process_id', None, "Multi-host: this process's index.")
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` before anything touches the devices, when multi-host."""
    # CPU processes need a collectives backend to talk to each other; GPUs and TPUs ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if FLAGS.coordinator_address or FLAGS.num_processes:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
        return
    if _launched_on_several_hosts():  # JAX finds the coordinator from the environment
        jax.distributed.initialize()


def _launched_on_several_hosts() -> bool:
    env = os.environ
    counts = (
        env.get('SLURM_NTASKS'),  # srun
        env.get('OMPI_COMM_WORLD_SIZE'),  # mpirun
        str(len(env.get('TPU_WORKER_HOSTNAMES', '').split(','))),  # Cloud TPU pod slices
    )
    return any(count and count.isdigit() and int(count) > 1 for count in counts)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    keeps_memory = xla_cpu.keep_host_memory()  # before anything starts threads
    initialize_distributed()
    # Our progress at INFO on process 0; the libraries' (orbax logs every save) at WARNING.
    logging.set_verbosity(logging.WARNING)
    if jax.process_index() == 0:
        std_logging.getLogger('alexnet_jax').setLevel(std_logging.INFO)
    if keeps_memory:
        std_logging.getLogger(__name__).info('CPU backend: host memory is reused between steps.')
    from alexnet_jax import train  # after initialize: importing TF/tfds must not grab devices

    try:
        results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ConfigError, FileNotFoundError, ValueError, FloatingPointError) as error:
        # Bad config, data or checkpoint, or a diverged loss: one line naming it and the fix.
        # (CheckpointMismatchError is a ValueError.) The checkpoints already written stay.
        logging.debug('Traceback:', exc_info=True)
        sys.exit(f'error: {error}')
    if 'eval_top1_error' in results:
        logging.info(
            'Done at step %d: top-1 error %.4f, top-5 error %.4f (%s).',
            results['step'],
            results['eval_top1_error'],
            results['eval_top5_error'],
            f'{FLAGS.workdir}/results.json',
        )


if __name__ == '__main__':
    app.run(main)
