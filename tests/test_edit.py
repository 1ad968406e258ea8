"""model.edit(): persistent edits, a bound edited copy, clear, export/import across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from nnsight_fast import NNsight

from models import MLP


def make():
    torch.manual_seed(0)
    net = MLP()
    return net, NNsight(net)


def zeroed_act(net, x):
    return net.head(torch.relu(net.fc2(torch.zeros(x.shape[0], 8))))


def test_edit_binds_an_edited_copy_and_leaves_the_model():
    net, model = make()
    x = torch.randn(2, 4)
    with model.edit() as edited:
        edited.act.output[:] = 0
    with model.trace(x):
        plain = model.output.save()
    with edited.trace(x):
        hidden = edited.act.output.save()
        changed = edited.output.save()
    assert torch.allclose(plain, net(x))
    assert torch.allclose(changed, zeroed_act(net, x)) and torch.all(hidden == 0)
    assert torch.equal(net(x), plain)  # outside a trace nothing changes


def test_inplace_edit_and_clear():
    net, model = make()
    x = torch.randn(3, 4)
    scale = 3.0
    with model.edit(inplace=True):
        model.fc1.output = model.fc1.output * scale
    with model.trace(x):
        out = model.output.save()
    assert torch.allclose(out, net.head(torch.relu(net.fc2(torch.relu(net.fc1(x) * scale)))))
    model.clear_edits()
    with model.trace(x):
        out = model.output.save()
    assert torch.allclose(out, net(x))


def test_export_and_import_in_a_new_process(tmp_path):
    net, model = make()
    with model.edit(inplace=True):
        model.act.output[:] = 0
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    model.export_edits("zero-act", export_dir=str(tmp_path))
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(tmp_path.parent.parent)!r})
        sys.path.insert(0, {__file__.rsplit("/", 1)[0]!r})
        from models import MLP
        from nnsight_fast import NNsight
        net = MLP(); net.load_state_dict(torch.load({str(tmp_path / "weights.pt")!r}))
        model = NNsight(net)
        model.import_edits("zero-act", export_dir={str(tmp_path)!r})
        x = torch.ones(2, 4)
        with model.trace(x):
            out = model.output.save()
        expected = net.head(torch.relu(net.fc2(torch.zeros(2, 8))))
        print("MATCH" if torch.allclose(out, expected) else "DIFFER")
    """)
    (tmp_path / "other_process.py").write_text(script)
    done = subprocess.run([sys.executable, str(tmp_path / "other_process.py")], capture_output=True, text=True,
                          timeout=120)
    assert "MATCH" in done.stdout, done.stderr
