"""Evaluate a checkpoint on the test split: ``python eval.py ckpt_path=<file.ckpt|last>``."""

from ugmm.launch import eval_main

if __name__ == "__main__":
    eval_main()
