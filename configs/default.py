"""Base configuration: every field a run reads, with the paper's values where it has one.

Experiment configs (``imagenet.py``, ``fashion_mnist.py``, ...) call :func:`get_config` and
override a handful of fields. Configs are pure: nothing here looks at the machine it is read on.
Fields whose value is ``None`` mean "take the variant's preset" (model switches) or "let the
library decide" (paths).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    # --- Data (alexnet_jax/input_pipeline.py) ---
    # prepared: a set written once by `python -m alexnet_jax.prepare`, read at memory speed.
    c.dataset = 'imagenet2012'  # or fashion_mnist | cifar10 | imagefolder | synthetic | prepared
    c.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data_dir
    c.manual_dir = ml_collections.config_dict.placeholder(str)  # ImageNet tars
    # Also the folder of downloaded archives (Fashion-MNIST's IDX files, CIFAR-10's tar).
    c.dataset_path = ml_collections.config_dict.placeholder(str)  # image folder, prepared set
    c.num_classes = 1000  # classes of the dataset (imagefolder: taken from the class folders)
    c.image_size = 227  # Section 3 / alexnet-spec.md: 227 (not 224) gives 55x55 after conv1.
    c.resize_size = 256  # Section 2: shorter side to 256, central 256x256 patch.
    c.crop_padding = 0  # small images: pad by this much, then random-crop back (0: 256/227 path).
    c.random_crop = True  # Section 4.1
    c.random_flip = True  # Section 4.1
    c.pca_noise_std = 0.1  # Section 4.1: alpha_i ~ N(0, 0.1); 0 turns the colour noise off.
    c.pca_stats = ml_collections.config_dict.placeholder(str)  # from dataset_stats
    c.normalization = 'mean_image'  # mean_image (Section 2) | channel (mean/std) | none
    c.shuffle_buffer = 16_384  # examples in the tf.data shuffle buffer (sequential sources)
    c.skip_corrupt_images = False  # imagefolder: skip and count undecodable images, not fail
    c.synthetic_num_train = 1_281_167  # dataset=synthetic: training images per epoch (ImageNet's)
    c.synthetic_num_eval = 50_000  # dataset=synthetic: evaluation images (ImageNet val's)
    # Held out of the training split, these choose learning rates and drive the plateau rule;
    # the test split (ImageNet's validation set) is then read once, at the end.
    c.validation_examples = 0  # training images held out (0: evaluations read the test split)
    c.train_clean_examples = 10_000  # training images evaluated as the test ones are (0: none)

    # --- Model (alexnet_jax/models.py) ---
    c.model = 'paper'  # paper | single_tower | caffenet | owt | bn | small
    # Switches that override the variant's preset when not None.
    c.norm = ml_collections.config_dict.placeholder(str)  # lrn | bn | none
    c.pooling = ml_collections.config_dict.placeholder(str)  # overlapping | non_overlapping
    c.activation = ml_collections.config_dict.placeholder(str)  # relu | tanh
    c.dropout_rate = ml_collections.config_dict.placeholder(float)  # Section 4.2: 0.5
    c.groups = ml_collections.config_dict.placeholder(int)  # 1 | 2
    c.init_scheme = ml_collections.config_dict.placeholder(str)  # paper | modern
    c.half_kernels = False  # Section 3.2's one-GPU net: conv1-4 at half the kernels, conv5/fc full
    c.model_parallel_towers = False  # Section 3.2 for real: each tower on its own device.
    # LRN within each tower's half of the channels, as on the paper's two GPUs (needs groups=2).
    c.tower_local_lrn = ml_collections.config_dict.placeholder(bool)  # None: model_parallel_towers

    # --- Optimisation (alexnet_jax/optim.py) ---
    c.batch_size = 128  # global, over all hosts and devices (Section 5)
    c.num_epochs = 90.0  # Section 5: "roughly 90 cycles"
    c.num_train_steps = -1  # > 0 wins over num_epochs
    c.learning_rate = 0.01  # Section 5; global batch 128
    c.momentum = 0.9  # Section 5
    c.weight_decay = 0.0005  # Section 5, coupled into the update as the paper writes it
    c.decay_biases = False  # Caffe's reference does not decay biases (decay_mult: 0)
    c.lr_schedule = 'plateau'  # plateau | step | cosine | constant
    c.plateau_factor = 0.1  # Section 5: divide by 10
    c.plateau_patience = 1  # evaluations without improvement before dividing
    c.plateau_max_reductions = 3  # Section 5: "reduced three times prior to termination"
    c.step_every_epochs = 30.0  # lr_schedule='step': multiply by plateau_factor every this many
    c.warmup_epochs = 0.0  # lr_schedule='cosine'
    c.half_precision = False  # bfloat16 compute, float32 parameters and optimizer state
    c.seed = 0  # parameters, dropout, augmentation and data order
    c.init_from = ml_collections.config_dict.placeholder(str)  # a run dir to fine-tune from
    c.freeze = ''  # comma-separated top-level layers never updated, e.g. 'conv1,conv2'

    # --- Loop cadence ---
    c.eval_every_steps = 10_000  # centre-crop evaluation (and the plateau rule) this often
    c.checkpoint_every_steps = 5_000  # a checkpoint this often (and at each evaluation)
    c.log_every_steps = 100  # a progress line and metrics.jsonl row this often
    c.log_every_seconds = 60.0  # also a line when this long has passed (logs under schedulers)
    # CPU only. False: one step at a time, so that the reused host memory holds one step's
    # scratch buffer (436 MB for `paper` at batch 32), not one per step dispatched ahead.
    c.cpu_dispatch_ahead = False
    c.eval_crops = 10  # 1 (centre) | 10 (Section 4.1: four corners + centre, and mirrors)
    # None: the whole split; N: its first N images (whole batches); 0: no evaluation at all.
    c.eval_num_examples = ml_collections.config_dict.placeholder(int)  # images per evaluation
    c.eval_batch_size = ml_collections.config_dict.placeholder(int)  # None: batch_size
    c.keep_checkpoints = 3  # the newest N checkpoints, plus the best by validation error
    c.prefetch_batches = 2  # batches in flight to the devices
    c.input_threads = 0  # dataset=prepared: threads reading images (0: every core)

    c.lock()  # a misspelt field in a config or sweep is an error, not a silent no-op
    return c
