"""`nanovllm-api` with a fault injected for tests: the engine's step raises
once it has run FAIL_AFTER_STEPS steps, as a bug or a failed kernel would."""

import os

from nanovllm_api.cli import main
from nanovllm_core.engine.llm_engine import LLMEngine

INJECTED_MESSAGE = "injected fault reading /opt/internal/secret.bin"


def fail_after(steps: int) -> None:
    real_step = LLMEngine.step
    taken = 0

    def step(self):
        nonlocal taken
        taken += 1
        if taken > steps:
            raise RuntimeError(INJECTED_MESSAGE)
        return real_step(self)

    LLMEngine.step = step


if __name__ == "__main__":
    fail_after(int(os.environ["FAIL_AFTER_STEPS"]))
    main()
