import math

import torch

from drift.loss import dpo_loss


def test_dpo_loss_matches_hand_computed_values():
    # pair 0: chosen logratio = -10 - (-12) = 2, rejected logratio = -20 - (-19) = -1, s = 0.1 * 3 = 0.3
    # pair 1: chosen logratio = -5 - (-4) = -1, rejected logratio = -8 - (-9) = 1, s = 0.5 * -2 = -1.0
    terms_0 = dpo_loss(torch.tensor([-10.0]), torch.tensor([-20.0]), torch.tensor([-12.0]), torch.tensor([-19.0]), beta=0.1)
    terms_1 = dpo_loss(torch.tensor([-5.0]), torch.tensor([-8.0]), torch.tensor([-4.0]), torch.tensor([-9.0]), beta=0.5)
    assert math.isclose(terms_0.losses.item(), math.log(1 + math.exp(-0.3)), rel_tol=1e-6)
    assert math.isclose(terms_1.losses.item(), math.log(1 + math.exp(1.0)), rel_tol=1e-6)
    assert math.isclose(terms_0.chosen_rewards.item(), 0.2, rel_tol=1e-6)
    assert math.isclose(terms_0.rejected_rewards.item(), -0.1, rel_tol=1e-6)
    assert math.isclose(terms_0.margins.item(), 0.3, rel_tol=1e-6)
    assert math.isclose(terms_1.margins.item(), -1.0, rel_tol=1e-6)
    # sigma(-s) = 1 / (1 + e^s)
    assert math.isclose(terms_0.gradient_weights.item(), 1 / (1 + math.exp(0.3)), rel_tol=1e-6)
    assert math.isclose(terms_1.gradient_weights.item(), 1 / (1 + math.exp(-1.0)), rel_tol=1e-6)


def test_dpo_gradient_is_minus_beta_sigmoid_minus_s():
    policy_chosen = torch.tensor([-3.0, -7.0], dtype=torch.float64, requires_grad=True)
    policy_rejected = torch.tensor([-4.0, -2.0], dtype=torch.float64, requires_grad=True)
    reference_chosen = torch.tensor([-3.5, -6.0], dtype=torch.float64)
    reference_rejected = torch.tensor([-4.0, -2.5], dtype=torch.float64)
    beta = 0.2
    terms = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    terms.losses.sum().backward()
    s = [beta * ((-3.0 + 3.5) - (-4.0 + 4.0)), beta * ((-7.0 + 6.0) - (-2.0 + 2.5))]
    expected = [-beta / (1 + math.exp(value)) for value in s]
    assert torch.allclose(policy_chosen.grad, torch.tensor(expected, dtype=torch.float64))
    assert torch.allclose(policy_rejected.grad, -torch.tensor(expected, dtype=torch.float64))
