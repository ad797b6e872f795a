"""The DPO (sigmoid) loss and its diagnostics, as pure functions of sequence log-probs.

s = beta * [(log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-))]
loss = -log sigmoid(s);  d loss / d s = -sigmoid(-s), the per-pair gradient weight the paper tracks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DpoTerms:
    losses: torch.Tensor  # [pairs]
    chosen_rewards: torch.Tensor  # beta * (log pi - log ref) on the chosen side, detached
    rejected_rewards: torch.Tensor
    logits: torch.Tensor  # s, detached

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def gradient_weights(self) -> torch.Tensor:
        """sigmoid(-s): how hard each pair still pulls (0 once the pair is won by a wide margin)."""
        return torch.sigmoid(-self.logits)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> DpoTerms:
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    return DpoTerms(
        losses=-F.logsigmoid(logits),
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
        logits=logits.detach(),
    )
