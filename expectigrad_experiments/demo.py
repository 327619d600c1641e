"""Demo: Expectigrad vs Adam on scikit-learn's handwritten digits (shipped with
scikit-learn, no download), same model, same data, same seed.

    expectigrad-demo [--epochs 20] [--lr 1e-3]
    python -m expectigrad_experiments.demo [--epochs 20] [--lr 1e-3]
"""

import argparse
import time

import keras  # noqa: E402

import expectigrad_tf  # noqa: E402

from .data import load_digits_shuffled_split  # noqa: E402


def make_model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10),
    ])


def train(name, optimizer, data, epochs, batch_size, seed):
    (x, y), (xt, yt) = data
    model = make_model(seed)
    model.compile(optimizer=optimizer, jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    hist = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    test_loss, test_acc = model.evaluate(xt, yt, verbose=0)
    return hist.history["loss"], test_loss, test_acc, seconds


def main(argv=None):
    p = argparse.ArgumentParser(prog="expectigrad-demo", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import tensorflow as tf

    status = expectigrad_tf.fused_status()
    if status["available"]:
        fused = (f"fused op loaded, kernels for {', '.join(status['devices'])}; "
                 f"{len(tf.config.list_physical_devices('GPU'))} GPU(s) visible")
    else:
        fused = f"fused op unavailable ({status['reason']}): composite path"
    print(f"expectigrad_tf {expectigrad_tf.__version__}: {fused}")
    data = load_digits_shuffled_split(args.seed)
    print(f"digits: {len(data[0][0])} train / {len(data[1][0])} test images, "
          f"MLP 64-256-256-10, batch {args.batch_size}, lr {args.lr}, {args.epochs} epochs\n")
    runs = {
        "Expectigrad": train("Expectigrad", expectigrad_tf.Expectigrad(learning_rate=args.lr),
                             data, args.epochs, args.batch_size, args.seed),
        "Adam": train("Adam", keras.optimizers.Adam(learning_rate=args.lr),
                      data, args.epochs, args.batch_size, args.seed),
    }
    print(f"{'epoch':>5}  {'Expectigrad loss':>16}  {'Adam loss':>10}")
    for e in range(args.epochs):
        print(f"{e + 1:>5}  {runs['Expectigrad'][0][e]:>16.4f}  {runs['Adam'][0][e]:>10.4f}")
    print()
    for name, (losses, tl, ta, sec) in runs.items():
        print(f"{name:<12} final train loss {losses[-1]:.4f}  test loss {tl:.4f}  "
              f"test accuracy {ta:.3f}  ({sec:.1f} s)")


if __name__ == "__main__":
    main()
