"""Active learning on Fashion-MNIST: the quickstart network retrained each round.

Command (the README's "Active learning" measurement; resumes where it stopped):

    python -m experiments.active_learn --config=configs/active_fashion_mnist.py \
        --workdir=runs/al --simulate \
        --strategy=random,margin,entropy,least_confidence,badge,bald,coreset \
        --initial_labels=500 --query_size=500 --rounds=6 --seeds=3 \
        --min_steps=200 --pool_subset=10000 --full_data_accuracy=0.9238
    # warm starting, measured on one strategy, in the same workdir:
    python -m experiments.active_learn ... --strategy=margin --warm_start

Per-round recipe: the quickstart's network (three conv stages 24/48/96, hidden
128, dropout 0.1), SGD with Nesterov momentum 0.9, LR 0.05, cosine after half an
epoch of warm-up, weight decay 5e-4, label smoothing 0.1, flips, batch 64, for
max(200 steps, 10 epochs over the labelled set): 200 steps at 500-1,000 labels,
547 at 3,500. One validation pass (1,000 images) at the end of each round; the
full 10k test split scores every round. Each round scores a seeded random 10,000
of the unlabelled training images (Gal et al. 2017 scored random pool subsets
too); BALD uses 10 MC-dropout passes.

Expected result (README "Active learning", measured 2026-11-29/30, 3 seeds, 168
rounds): test accuracy at 3,500 labels, mean over seeds: margin 0.8899 (+1.95 points
over random, paired per seed +1.69/+2.16/+2.01), badge 0.8859 (+1.55),
least_confidence 0.8832, bald 0.8785, entropy 0.8768, coreset 0.8709, random 0.8704;
all labels 0.9238. Warm-started margin: 0.8954. A round took 1-1.5 min at load 3-7
(median: training + test 56-75 s, pool scoring 5-11 s, selection up to 8 s for badge);
all 168 rounds took about 6.3 hours of compute.

Smoke: `--config=configs/active_fashion_mnist.py:smoke` trains 20 steps per round on
a 1,024-image training split (e.g. --initial_labels=64 --query_size=32 --rounds=1
--seeds=1 --strategy=margin).
"""

import pathlib

from vision import config as config_lib


def get_config(arg: str | None = None):
  arg = config_lib.parse_arg(arg, smoke=False)
  # configs/fashion_mnist.py's data, network and optimizer.
  config = config_lib.from_file(pathlib.Path(__file__).with_name("fashion_mnist.py"))
  # Small labelled sets: half the quickstart's batch and learning rate, epochs over the labelled set.
  config.train.batch_size = 64
  config.train.epochs = 10.0
  config.optim.learning_rate = 0.05
  config.train.eval_batch_size = 500
  # A checkpoint every 100 steps: a round killed mid-way resumes from there.
  config.train.checkpoint_every_steps = 100
  config.train.keep_checkpoints = 1
  # Queries may skew the class counts; the recipe stays the same every round.
  config.train.imbalance_threshold = None

  if arg.smoke:
    config.data.max_train_examples = 1024
    config.data.max_eval_examples = 256
    config.train.batch_size = 32
    config.train.epochs = 1.0
    config.train.num_steps = 20
    config.train.log_every_steps = 10
    config.train.checkpoint_every_steps = 10
  return config
