"""Active learning: choose which images to label next (vision/active/strategies.py).

    python -m experiments.active_learn --config=configs/active_fashion_mnist.py \
        --workdir=runs/al --strategy=margin,random --simulate

`simulate` replays active learning on a labelled dataset (labels hidden until
"queried"); `real` scores a folder of unlabelled images with a trained model and
writes Label Studio tasks, then reads the annotator's export back.
"""
