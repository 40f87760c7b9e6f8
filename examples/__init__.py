"""The example scripts, and the models they share with the benchmarks and the
tests (`from examples.models import ExampleVAE`, with the repository root on
sys.path). The scripts also run as files: `python examples/train_vae.py`."""
