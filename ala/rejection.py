"""One shape for refused input: a reason that labels a `*_rejected_total{reason}` metric, and a readable detail."""


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
