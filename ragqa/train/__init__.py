"""Fine-tuning: RAFT-style training data, the training loop, hyper-parameter search, adapter export."""
