"""distrl: reinforcement-learning fine-tuning of language models as a Ray actor/learner system.

The library package holds everything that is not a process: configuration, algorithms, rewards,
data, model loading, generation backends and weight packing. It imports neither Ray actors nor
vLLM at module top; the processes live in `actors/`, `learners/` and `launch/`.
"""

__version__ = "0.1.0"
