"""jupyter_chatbridge benchmark suite: `python -m bench` (see bench/README.md)."""
