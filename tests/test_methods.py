import pytest
import torch

from smec_fast.config import resolve_config
from smec_fast.methods import CrossEntropyMethod, ElrMethod, SmecMethod, build_method
from smec_fast.model import FerResNet18


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32), torch.randint(0, 7, (4,)), torch.tensor([3, 0, 7, 5])


def test_smec_loss_is_classification_plus_weighted_consistency(batch):
    model = FerResNet18(7)
    method = SmecMethod(10, 7, beta=0.7, lam=3.0, grid=(1, 2), lambda_con=3.0)
    loss, parts = method(model, *batch)
    torch.testing.assert_close(loss, parts["cls"] + 3.0 * parts["con"])
    assert parts["con"] > 0
    # the ELR targets of the batch's samples moved, the others did not
    touched = method.elr.targets.abs().sum(1) > 0
    assert touched.nonzero().flatten().tolist() == [0, 3, 5, 7]


def test_consistency_warmup_ramps_lambda(batch):
    model = FerResNet18(7).eval()
    method = SmecMethod(10, 7, beta=0.7, lam=3.0, grid=(1, 2), lambda_con=2.0)
    for done, factor in ((0.0, 0.0), (0.5, 0.25), (2.0, 1.0), (5.0, 1.0)):
        method.set_progress(done, warmup_epochs=2.0)
        loss, parts = method(model, *batch)
        torch.testing.assert_close(loss, parts["cls"] + 2.0 * factor * parts["con"])
    method.set_progress(0.0, warmup_epochs=0.0)  # no warm-up: full weight from the start
    assert method.con_ramp.item() == 1.0


def test_build_method_resolves_lambda_from_noise():
    smec = build_method(resolve_config(cli_values={"noise_rate": 0.5}), 10, 7, noise_rate=0.5)
    assert isinstance(smec, SmecMethod) and smec.lambda_con == 5.0
    assert build_method(resolve_config(cli_values={"lambda_con": 0.5}), 10, 7, 0.0).lambda_con == 0.5
    assert isinstance(build_method(resolve_config(cli_values={"method": "ce"}), 10, 7, 0.0), CrossEntropyMethod)
    assert isinstance(build_method(resolve_config(cli_values={"method": "elr"}), 10, 7, 0.0), ElrMethod)
