"""Trains and evaluates AlexNet.

    python -m alexnet_jax.main --config configs/imagenet.py --workdir DIR [--config.FIELD=VALUE]

Running the same command again in the same workdir resumes from its newest checkpoint; on a
finished run it does nothing. On several hosts, start one process per host: on TPU pods and
SLURM the distributed runtime finds its peers by itself; elsewhere pass --coordinator_address,
--num_processes and --process_id. ``python -m alexnet_jax.config_help`` lists the config fields.

Exit status: 0 finished; 1 an error (one ``error:`` line names it and the fix); 143 (SIGTERM,
preemption) or 130 (Ctrl-C) stopped at a step boundary with a checkpoint saved: rerun to resume.
"""

import logging as std_logging
import os
import socket
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    None,
    'Config file (configs/*.py); override fields with --config.FIELD=VALUE '
    '(python -m alexnet_jax.config_help lists them).',
    lock_config=True,
)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes in the job.')
flags.DEFINE_integer('process_id', None, "Multi-host: this process's index.")
flags.DEFINE_integer(
    'distributed_timeout', 300, 'Multi-host: seconds to wait for every process to connect.'
)
flags.DEFINE_string(
    'coordinator_bind_address',
    None,
    'Multi-host: address:port the coordinator (process 0) listens on (default: all interfaces, '
    "the port of --coordinator_address). E.g. '10.0.0.1:1234' to listen on one interface only.",
)
flags.mark_flags_as_required(['config', 'workdir'])

log = std_logging.getLogger('alexnet_jax.main')  # not __name__: it is __main__ under -m


class DistributedInitError(RuntimeError):
    pass


def initialize_distributed() -> None:
    """``jax.distributed.initialize`` before anything touches the devices, when multi-host."""
    import jax

    # CPU processes need a collectives backend to talk to each other; GPUs and TPUs ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    explicit = FLAGS.coordinator_address or FLAGS.num_processes
    if not explicit and not _launched_on_several_hosts():
        return
    address = FLAGS.coordinator_address
    timeout = FLAGS.distributed_timeout
    if address and FLAGS.process_id:  # not the coordinator: it must be reachable
        _wait_for_coordinator(address, timeout)
    # If a peer never comes, jaxlib ends the process itself after the timeout (it cannot be
    # caught): this line says what it was waiting for.
    print(
        f'Joining the multi-host job through coordinator {address or "(from the environment)"}; '
        f'waiting up to {timeout} s for all processes.',
        file=sys.stderr,
        flush=True,
    )
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
        initialization_timeout=timeout,
        coordinator_bind_address=FLAGS.coordinator_bind_address,
    )


def _wait_for_coordinator(address: str, timeout: float) -> None:
    """Waits until ``host:port`` accepts connections, or raises naming it."""
    host, _, port = address.rpartition(':')
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip('[]'), int(port)), timeout=2):
                return
        except (OSError, ValueError) as error:
            if time.monotonic() >= deadline:
                raise DistributedInitError(
                    f'The coordinator {address} did not answer within {timeout} s '
                    f'({getattr(error, "strerror", None) or error}). Start process 0 there, check '
                    f'--coordinator_address and that the port is reachable; '
                    f'--distributed_timeout sets the wait.'
                ) from None
            time.sleep(0.5)


def _launched_on_several_hosts() -> bool:
    env = os.environ
    counts = (
        env.get('SLURM_NTASKS'),  # srun
        env.get('OMPI_COMM_WORLD_SIZE'),  # mpirun
        str(len(env.get('TPU_WORKER_HOSTNAMES', '').split(','))),  # Cloud TPU pod slices
    )
    return any(count and count.isdigit() and int(count) > 1 for count in counts)


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).replace('\\n', ' ').split())
    if isinstance(error, (KeyError, AttributeError)):  # ml_collections quotes its message
        text = text.strip('\'"').replace("\\'", "'")
    return text


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad ``--config`` file or field as one ``error:`` line."""
    try:
        args = FLAGS(argv)
        path = FLAGS['config'].config_filename.split(':')[0]
        if not os.path.isfile(path):
            sys.exit(f'error: --config {path}: no such file (the configs are in configs/*.py).')
        FLAGS.config.get('model')  # loads the config file now, not at first use
    except flags.Error as error:
        sys.exit(f'error: {_one_line(error)} (--help lists the flags)')
    except (OSError, AttributeError, KeyError, TypeError, ValueError) as error:
        sys.exit(f'error: --config: {_one_line(error)}')
    return args


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    config = FLAGS.config
    from alexnet_jax import cli, runtime, xla_cpu

    # Before anything starts threads.
    settings = runtime.configure(keep_host_memory=True, dispatch_ahead=config.cpu_dispatch_ahead)
    code = 0
    try:
        initialize_distributed()
        import jax

        # Our progress at INFO on process 0; the libraries' (orbax logs every save) at WARNING.
        cli.quiet_libraries()
        if jax.process_index() == 0:
            std_logging.getLogger('alexnet_jax').setLevel(std_logging.INFO)
        if settings.keeps_host_memory:
            ahead = 'dispatched ahead' if config.cpu_dispatch_ahead else 'one at a time'
            tcache = 'off' if xla_cpu.NO_TCACHE in os.environ.get('GLIBC_TUNABLES', '') else 'on'
            log.info(
                "CPU backend: host memory is reused between steps (glibc's tcache %s); steps %s.",
                tcache,
                ahead,
            )
        code = _train(config)
    except DistributedInitError as error:
        print(f'error: {error}', file=sys.stderr)
        code = 1
    _exit(code)


def _train(config) -> int:
    """Trains; the exit status (see the module docstring)."""
    from alexnet_jax import (  # after initialize: TF must not grab devices
        checkpointing,
        preemption,
        train,
    )
    from alexnet_jax.config_checks import ConfigError
    from alexnet_jax.workdir_lock import WorkdirLockedError

    try:
        results = train.train_and_evaluate(config, FLAGS.workdir)
    except (
        ConfigError,
        FileNotFoundError,
        ValueError,
        FloatingPointError,
        checkpointing.CheckpointWriteError,
        WorkdirLockedError,
    ) as error:
        # Bad config, data or checkpoint, a diverged loss, a failed checkpoint write or a busy
        # workdir: one line naming it and the fix. (CheckpointMismatchError is a ValueError.)
        # The checkpoints already written stay.
        logging.debug('Traceback:', exc_info=True)
        print(f'error: {error}', file=sys.stderr)
        return 1
    if 'stopped_by' in results:
        return preemption.exit_code(results['stopped_by'])
    errors = (
        [f'top-1 error {results["eval_top1_error"]:.4f}'] if 'eval_top1_error' in results else []
    )
    if 'eval_top5_error' in results:
        errors.append(f'top-5 error {results["eval_top5_error"]:.4f}')
    log.info(
        'Done at step %d%s (%s).',
        results['step'],
        f': {", ".join(errors)}' if errors else '',
        os.path.join(FLAGS.workdir, 'results.json'),
    )
    return 0


def _exit(code: int) -> None:
    """Ends the process now that every result is written and every file closed.

    Library threads (orbax's after a failed write, tf.data's) can otherwise keep the
    interpreter alive for minutes after the work is done.
    """
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
    std_logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    """Entry point of the ``alexnet-jax-train`` command."""
    from alexnet_jax import xla_cpu

    xla_cpu.exec_with_malloc_tunables()  # first: glibc reads them only as a process starts
    app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
    run()
