"""Evaluates a checkpoint on a split: top-1 / top-5 error, centre or ten crops.

    python -m alexnet_jax.evaluate --workdir DIR [--step N | --best] [--crops 10] \
        [--split test|validation|train_clean]

The test split by default (ImageNet's validation set); ``validation`` and ``train_clean`` are the
run's held-out training images and its clean training subset (``config.validation_examples``,
``train_clean_examples``). Prints the errors and writes them to
``DIR/eval_step<N>_<crops>crop.json`` (``DIR/<split>_step<N>_<crops>crop.json`` for the others).
"""

import json
import sys

import jax
from absl import app, flags
from etils import epath

from alexnet_jax import cli, runtime

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, "The training run's directory.", required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
flags.DEFINE_bool('best', False, 'Use the checkpoint with the lowest validation error.')
flags.DEFINE_enum('crops', None, ['1', '10'], "Centre crop or the paper's ten crops.")
flags.DEFINE_string('data_dir', None, 'Override the tfds data_dir the run used.')
flags.DEFINE_integer('eval_batch_size', None, 'Override the evaluation batch size.')
flags.DEFINE_enum(
    'split',
    'test',
    ['test', 'validation', 'train_clean'],
    "The test split, the run's held-out validation images, or its clean training subset.",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    runtime.configure()
    cli.quiet_libraries()
    from alexnet_jax import dataset_stats, datasets, evaluation, train, trained
    from alexnet_jax.data_types import METRIC_PREFIX

    try:
        config = trained.config_from_workdir(FLAGS.workdir)
        for field, value in (
            ('eval_crops', FLAGS.crops),
            ('data_dir', FLAGS.data_dir),
            ('eval_batch_size', FLAGS.eval_batch_size),
        ):
            if value is not None:
                config[field] = int(value) if field == 'eval_crops' else value
        split = FLAGS.split
        if split != 'test' and not datasets.get(config).info().count(split):
            field = 'validation_examples' if split == 'validation' else 'train_clean_examples'
            raise ValueError(
                f'The run in {FLAGS.workdir} has no {split} split (config.{field} = '
                f'{config[field]}): evaluate --split=test, or train with {field} > 0.'
            )
        state = trained.load_trained_state(config, FLAGS.workdir, FLAGS.step, FLAGS.best)
        step = int(state.step)
        placement = train.placement_for(config, dataset_stats.load_stats(config))
        state = placement.place_state(state)
        result = evaluation.evaluate(placement, state, config, split=split)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    result = {'step': step, 'eval_crops': config.eval_crops, **result}
    name = METRIC_PREFIX[split]
    if jax.process_index() == 0:
        stem = 'eval' if split == 'test' else split
        path = epath.Path(FLAGS.workdir) / f'{stem}_step{step}_{config.eval_crops}crop.json'
        path.write_text(json.dumps(result, indent=2))
        top5 = result.get(f'{name}_top5_error')  # absent with five classes or fewer
        print(
            f'step {step}, {config.eval_crops} crop(s), {result[f"{name}_count"]} images: '
            f'top-1 error {result[f"{name}_top1_error"]:.4f}'
            + (f', top-5 error {top5:.4f}' if top5 is not None else '')
            + f', loss {result[f"{name}_loss"]:.4f} ({path})'
        )


def run() -> None:
    """The console script's entry point."""
    app.run(main)


if __name__ == '__main__':
    run()
