"""The advisor's prompts: editable templates in `ALA_ADVISOR_PROMPT_DIR` (`system.txt`, `user.txt`, and the option
question's `options_system.txt`, `options_user.txt`), filled with a digest's text and its legal actions or options."""

from __future__ import annotations

import hashlib

from protos import StateDigest
from services.advisor.settings import AdvisorSettings


class Prompt:
    """Editable templates (`system.txt`, `user.txt`) filled with the digest's text and its legal actions."""

    def __init__(self, settings: AdvisorSettings) -> None:
        self.system = (settings.prompt_dir / "system.txt").read_text().strip()
        self.user = (settings.prompt_dir / "user.txt").read_text().strip()
        self.options_system = (settings.prompt_dir / "options_system.txt").read_text().strip()
        self.options_user = (settings.prompt_dir / "options_user.txt").read_text().strip()
        self.options_version = hashlib.sha1(f"{self.options_system}\n{self.options_user}".encode()).hexdigest()[:8]
        """Names the situation caches' files: a changed prompt starts a new cache."""

    def option_messages(self, digest: StateDigest, names: list[str]) -> list[dict[str, str]]:
        """The option question: the mission (the first line of the digest's text) and the situation, never the
        exact state, so that one answer serves every state of the situation."""
        mission = digest.text.splitlines()[0] if digest.text else ""
        options = "\n".join(f"- {name}" for name in names)
        user = self.options_user.format(mission=mission, situation=digest.situation, options=options)
        return [{"role": "system", "content": self.options_system}, {"role": "user", "content": user}]

    def messages(self, digest: StateDigest) -> list[dict[str, str]]:
        actions = "\n".join(f"{i}: {name}" for i, name in enumerate(digest.action_names))
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(state=digest.text, actions=actions)},
        ]
