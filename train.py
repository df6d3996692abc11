"""Train a uGMM-NN: ``python train.py [group=option ...] [key=value ...]`` (see README, Configuration)."""

from ugmm.launch import train_main

if __name__ == "__main__":
    train_main()
