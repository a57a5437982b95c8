from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

class TakenBack(BaseException): ...

MAX_DEFERRALS_PER_CALL: int

def monotonic() -> float: ...
def install_gc_clock() -> None: ...
def gc_seconds() -> float: ...
def install_signal_handler(signum: int) -> bool: ...

class Guard:
    thread_id: int
    signum: int
    running: bool
    fired: int
    deferred: int
    serial: int
    started: float
    last_held: float
    key: Hashable | None
    def __init__(self, thread_id: int, signum: int = 0) -> None: ...
    def call(self, func: Callable[[Any], T], arg: Any, key: Hashable) -> T: ...
    def held(self) -> float: ...
    def check(
        self, bound: float, discount: float = 0.0, serial: int | None = None
    ) -> tuple[int, Hashable, float, int] | None: ...
