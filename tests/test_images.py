"""Conv models (cnn, resnet_cnn), image data (data=images, CSV rows as images) and residual scaling.

Oracles come from the YAML comments and docs/config.md (model): conv i (cnn) or block i
(resnet_cnn) is in stage floor(3 i / depth) with width * 2^stage channels; a
stage's first conv halves the map with stride 2; a resnet_cnn block whose shape
changes has a 1x1 stride-2 projection shortcut; residual_scale rezero / skipinit
add a learnable scalar a (x + a f(x)) starting at 0 / 1/sqrt(depth); fixup zeroes
each branch's last layer and scales the others by depth^(-1/2) (two layers per
branch); a layer for the probes is a module holding a weight matrix or kernel.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deeprun
from deeprun import config, data as data_module, models
from deeprun.config import ConfigError
from deeprun.probes import LAYER_COLUMNS, Probes

from conftest import compose, run_dirs

SMALL = ["device=cpu", "epochs=2", "log.progress=false"]
IMAGES = ["data=images", "data.n=64"]


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]):
    return compose(list(overrides))


def images_cfg(*overrides: str):
    """A small image run's config on the CPU; later overrides win; each distinct config composed once."""
    return copy.deepcopy(_composed((*SMALL, *IMAGES, *overrides)))


def digits_cfg(path, *overrides: str):
    """data=csv on the digits file at `path`, its rows as 1x8x8 images."""
    return compose([*SMALL, "data=csv", f"data.path={path}", "data.target=digit", "data.image_shape=[1,8,8]",
                    *overrides])


def built(*overrides: str):
    """(model, data) as a run builds them."""
    cfg = images_cfg(*overrides)
    data = deeprun.build_data(cfg)
    return deeprun.build_model(cfg, data), data


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def expected_stage(i: int, depth: int) -> int:
    return 3 * i // depth


# --- registries ---------------------------------------------------------------------------

def test_registries_agree():
    assert {"cnn", "resnet_cnn"} <= set(models.MODELS) and set(config.IMAGE_MODELS) <= set(models.MODELS)
    assert "images" in data_module.SYNTHETIC
    assert len(data_module.PATTERNS) == config.MAX_IMAGE_CLASSES
    assert set(config.CHOICES["model.residual_scale"]) == set(models.RESIDUAL_SCALES) == {"1", "rezero", "skipinit",
                                                                                          "fixup"}
    assert set(models.NORMS_2D) == set(models.NORMS)


# --- cnn ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 2, 3, 4, 7])
def test_cnn_depth_convs_stages_channels_and_strides(depth):
    width = 4
    model, data = built("model=cnn", f"depth={depth}", f"width={width}")
    assert isinstance(model, models.CNN)
    layers = convs(model)
    assert len(layers) == depth
    stages = [expected_stage(i, depth) for i in range(depth)]
    assert [c.out_channels for c in layers] == [width * 2 ** s for s in stages]  # doubling at each stage
    assert [c.in_channels for c in layers] == [1] + [c.out_channels for c in layers[:-1]]
    starts = [i > 0 and stages[i] != stages[i - 1] for i in range(depth)]
    assert [c.stride for c in layers] == [(2, 2) if s else (1, 1) for s in starts]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in layers)
    # "same" padding: the map keeps its size inside a stage and halves at a stage's first conv
    sizes = []
    hooks = [c.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:]))) for c in layers]
    model.eval()
    with torch.no_grad():
        out = model(data.x_val[:3])
    for h in hooks:
        h.remove()
    assert out.shape == (3, 4)
    assert sizes == [(width * 2 ** s, 16 // 2 ** s, 16 // 2 ** s) for s in stages]
    assert model.head.in_features == width * 2 ** stages[-1]  # global average pooling: one number per channel


@pytest.mark.parametrize("position", ["pre", "post"])
@pytest.mark.parametrize("norm,cls", [("batch", nn.BatchNorm2d), ("layer", nn.GroupNorm), ("none", None)])
def test_cnn_honours_norm_position_act_and_dropout(norm, cls, position):
    model, _ = built("model=cnn", "depth=3", "width=4", f"norm={norm}", f"norm.position={position}", "act=tanh",
                     "dropout=0.25")
    names = [n for n, _ in model.named_children()]
    for i in range(3):
        k = names.index(f"conv{i}")
        following = [type(getattr(model, n)) for n in names[k + 1:k + 4]]
        if cls is None:
            assert following[:2] == [nn.Tanh, nn.Dropout]
        elif position == "pre":
            assert following == [cls, nn.Tanh, nn.Dropout]
        else:
            assert following == [nn.Tanh, cls, nn.Dropout]
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))]
    assert len(norms) == (0 if cls is None else 3)
    if cls is nn.GroupNorm:  # layer norm over each sample's (C, H, W), a scale per channel
        assert all(m.num_groups == 1 and m.weight.shape == (m.num_channels,) for m in norms)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25] * 3
    assert names[-3:] == ["pool", "flatten", "head"]


def test_init_covers_conv_kernels():
    model, _ = built("model=cnn", "depth=3", "width=16", "act=relu", "norm=none")
    for c in convs(model):  # kaiming_normal (init=auto, relu): std sqrt(2 / fan_in), fan_in = C_in * 3 * 3
        fan_in = c.in_channels * 9
        assert c.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.25)
        assert torch.count_nonzero(c.bias) == 0
    model, _ = built("model=cnn", "depth=2", "width=4", "init=uniform", "init.a=0.05")
    assert all(c.weight.abs().max() <= 0.05 for c in convs(model))


# --- resnet_cnn --------------------------------------------------------------------------------

def test_resnet_cnn_blocks_and_projections_exactly_where_the_shape_changes():
    depth, width = 5, 4
    model, data = built("model=resnet_cnn", f"depth={depth}", f"width={width}")
    assert isinstance(model, models.ResidualCNN)
    assert len(model.blocks) == depth
    stages = [expected_stage(i, depth) for i in range(depth)]  # [0, 0, 1, 1, 2]
    changes = [i > 0 and stages[i] != stages[i - 1] for i in range(depth)]
    assert changes == [False, False, True, False, True]
    for block, s, change in zip(model.blocks, stages, changes):
        assert block.f.conv1.out_channels == block.f.conv2.out_channels == width * 2 ** s
        assert block.f.conv1.stride == ((2, 2) if change else (1, 1))
        if change:
            proj = block.shortcut
            assert (proj.conv.kernel_size, proj.conv.stride) == ((1, 1), (2, 2))
            assert (proj.conv.in_channels, proj.conv.out_channels) == (width * 2 ** (s - 1), width * 2 ** s)
            assert isinstance(proj.norm, nn.BatchNorm2d)  # norm=batch, the default for resnet_cnn
        else:
            assert block.shortcut is None
    assert len(convs(model)) == 1 + 2 * depth + sum(changes)  # stem, two per block, the projections
    with torch.no_grad():
        assert model.eval()(data.x_val[:2]).shape == (2, 4)


def test_resnet_cnn_block_is_act_of_shortcut_plus_f():
    model, data = built("model=resnet_cnn", "depth=2", "width=4", "norm=none")
    model.eval()
    x = data.x_val[:3]
    with torch.no_grad():
        h = F.relu(model.stem.conv(x))
        for block in model.blocks:
            c1, c2 = block.f.conv1, block.f.conv2
            fx = c2(F.relu(c1(h)))
            skip = h if block.shortcut is None else F.conv2d(h, block.shortcut.conv.weight, block.shortcut.conv.bias,
                                                              stride=2)
            out = F.relu(skip + fx)
            assert torch.allclose(block(h), out, atol=1e-6)
            h = out
        expected = model.head(h.mean((2, 3)))
        assert torch.allclose(model(x), expected, atol=1e-6)
    assert model.blocks[1].shortcut is not None  # depth 2: two stages, the second block projects


# --- residual scaling ------------------------------------------------------------------------------

class OldBlock(nn.Module):
    """models.ResidualBlock as it was before residual_scale (git 5ec775d), with today's rule for
    biases: none on a layer whose output goes straight into BatchNorm (fc1 with norm=batch before
    the activation, fc2 with any norm=batch), whose batch mean cancels it."""

    def __init__(self, width, act, norm, norm_position, dropout):
        super().__init__()
        fc1_bias, fc2_bias = not (norm == "batch" and norm_position == "pre"), norm != "batch"
        f = [("fc1", nn.Linear(width, width, bias=fc1_bias)), *models.norm_act(width, act, norm, norm_position)]
        if dropout > 0:
            f.append(("drop", nn.Dropout(dropout)))
        f.append(("fc2", nn.Linear(width, width, bias=fc2_bias)))
        if (n := models.make_norm(norm, width)) is not None:
            f.append(("norm2", n))
        self.f = nn.Sequential(OrderedDict(f))
        self.act = act()

    def forward(self, x):
        return self.act(x + self.f(x))


class OldResidualMLP(nn.Module):
    def __init__(self, n_in, n_out, *, depth, width, act, norm="batch", norm_position="pre", dropout=0.0):
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.stem_act = act()
        self.blocks = nn.Sequential(*(OldBlock(width, act, norm, norm_position, dropout) for _ in range(depth)))
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.blocks(self.stem_act(self.stem(x))))


@pytest.mark.parametrize("overrides", [[], ["norm=none", "act=tanh"], ["dropout=0.2", "norm=layer"],
                                       ["init=torch_default"], ["norm.position=post", "init=torch_default"]])
def test_residual_scale_1_keeps_the_resnet_bit_identical(overrides):
    cfg = compose(["model=resnet", "depth=4", "width=8", "data.n=32", "device=cpu", *overrides])
    assert cfg.model.residual_scale == "1"  # the default
    data = deeprun.build_data(cfg)
    new = deeprun.build_model(cfg, data)
    torch.manual_seed(cfg.seed)
    old = OldResidualMLP(data.n_in, data.n_out, depth=cfg.depth, width=cfg.width, act=models.make_act(cfg.act),
                         norm=cfg.norm.name, norm_position=cfg.norm.position, dropout=cfg.dropout)
    models.init_weights(old, cfg.init, cfg.act)
    a, b = new.state_dict(), old.state_dict()
    assert list(a) == list(b)  # no alpha, nothing renamed
    assert all(torch.equal(a[k], b[k]) for k in a)
    new.eval(), old.eval()
    with torch.no_grad():
        assert torch.equal(new(data.x_val), old(data.x_val))


def _stem_head_path(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the net computes when every branch adds 0: relu(relu(z)) = relu(z), so the blocks of
    a resnet are the identity and those of a resnet_cnn reduce to relu(shortcut)."""
    if isinstance(model, models.ResidualMLP):
        return model.head(F.relu(model.stem(x.flatten(1))))
    h = model.stem(x)
    for block in model.blocks:
        h = h if block.shortcut is None else F.relu(block.shortcut(h))
    return model.head(h.mean((2, 3)))


@pytest.mark.parametrize("model_name", ["resnet", "resnet_cnn"])
def test_rezero_alpha_starts_at_zero_so_the_net_is_its_stem_and_head(model_name):
    model, data = built(f"model={model_name}", "depth=3", "width=4", "model.residual_scale=rezero")
    alphas = [b.alpha for b in model.blocks]
    assert all(isinstance(a, nn.Parameter) and a.shape == () and a.item() == 0.0 for a in alphas)
    model.eval()
    x = data.x_val[:5]
    with torch.no_grad():
        out, path = model(x), _stem_head_path(model, x)
    assert torch.allclose(out, path, atol=1e-6)
    assert out.abs().sum() > 0  # a real number, not all zeros
    # the scalars are parameters of their blocks, not layers: the probes' layers are the same as without them
    plain, _ = built(f"model={model_name}", "depth=3", "width=4")
    assert list(models.weight_layers(model)) == list(models.weight_layers(plain))
    assert Probes(model, x).names == Probes(plain, x).names
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters()) + 3


@pytest.mark.parametrize("model_name", ["resnet", "resnet_cnn"])
def test_skipinit_alpha_is_one_over_sqrt_depth(model_name):
    model, _ = built(f"model={model_name}", "depth=4", "width=4", "model.residual_scale=skipinit")
    assert [b.alpha.item() for b in model.blocks] == pytest.approx([0.5] * 4)
    assert all(b.alpha.requires_grad for b in model.blocks)


@pytest.mark.parametrize("model_name,layers", [("resnet", ("fc1", "fc2")), ("resnet_cnn", ("conv1", "conv2"))])
def test_fixup_zeroes_each_branchs_last_layer_and_scales_the_first(model_name, layers):
    first, last = layers
    common = (f"model={model_name}", "depth=4", "width=4", "norm=none")
    fixup, data = built(*common, "model.residual_scale=fixup")
    plain, _ = built(*common)  # the same seed: the same weights before Fixup
    for b, p in zip(fixup.blocks, plain.blocks):
        assert b.alpha is None
        assert torch.count_nonzero(getattr(b.f, last).weight) == 0 and torch.count_nonzero(getattr(b.f, last).bias) == 0
        assert torch.allclose(getattr(b.f, first).weight, getattr(p.f, first).weight * 4 ** -0.5)  # L^(-1/(2m-2)), m=2
        assert getattr(p.f, last).weight.abs().sum() > 0
    assert torch.equal(fixup.head.weight, plain.head.weight)  # only the branches change
    fixup.eval()
    x = data.x_val[:5]
    with torch.no_grad():
        assert torch.allclose(fixup(x), _stem_head_path(fixup, x), atol=1e-6)
    result = deeprun.run(images_cfg(*common, "model.residual_scale=fixup", "lr=0.01"))
    assert result.summary["status"] == "completed", result.summary["error"]
    assert result.summary["model.residual_scale"] == "fixup"  # the CLI key is the results column
    assert all(torch.count_nonzero(getattr(b.f, last).weight) > 0 for b in result.model.blocks)  # they learn


def test_rezero_alpha_learns_in_a_run():
    result = deeprun.run(images_cfg("model=resnet", "depth=2", "width=8", "model.residual_scale=rezero", "lr=0.01"))
    assert result.summary["status"] == "completed", result.summary["error"]
    assert all(b.alpha.item() != 0.0 for b in result.model.blocks)
    assert list(result.layers.name[result.layers.epoch == 0]) == ["stem", "blocks.0.f.fc1", "blocks.0.f.fc2",
                                                                  "blocks.1.f.fc1", "blocks.1.f.fc2", "head"]


def test_residual_scale_errors():
    with pytest.raises(ConfigError, match=r"^model.residual_scale='half': must be one of: 1, rezero, skipinit, fixup$"):
        deeprun.compose(["model=resnet", "model.residual_scale=half"])
    with pytest.raises(ConfigError, match=r"model.residual_scale='fixup'.*norm=none"):
        deeprun.compose(["model=resnet_cnn", "data=images", "model.residual_scale=fixup"])  # norm=batch by default
    with pytest.raises(ConfigError, match=r"unknown residual_scale 'half'"):  # a model built by hand
        models.ResidualMLP(3, 1, depth=2, width=4, act=nn.ReLU, residual_scale="half")


# --- data=images --------------------------------------------------------------------------------

def _all(d) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([d.x_train, d.x_val]), torch.cat([d.y_train, d.y_val])


def test_images_shape_seed_and_balance():
    cfg = images_cfg("data.n=200", "data.channels=3", "data.image_size=12", "data.n_classes=5")
    d = deeprun.build_data(cfg)
    assert d.x_train.shape == (160, 3, 12, 12) and d.x_val.shape == (40, 3, 12, 12)
    assert (d.in_shape, d.n_in, d.n_out, d.task) == ((3, 12, 12), 3 * 12 * 12, 5, "multiclass")
    x, y = _all(d)
    assert torch.bincount(y).tolist() == [40] * 5
    again = deeprun.build_data(cfg)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_train, d.y_train)
    other = deeprun.build_data(images_cfg("data.n=200", "data.channels=3", "data.image_size=12", "data.n_classes=5",
                                          "data.seed=1"))
    assert not torch.equal(other.x_train, d.x_train)
    binary = deeprun.build_data(images_cfg("data.n_classes=2"))
    assert (binary.task, binary.n_out, binary.y_train.shape[1]) == ("binary", 1, 1)


def test_images_are_the_class_patterns_with_jitter_and_noise():
    d = deeprun.build_data(images_cfg("data.n=160", "data.n_classes=8", "data.noise=0", "data.val_fraction=0"))
    x, y = _all(d)
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    img = x[:, 0]
    rows_constant = (img == img[:, :, :1]).all((1, 2))  # every row one value: horizontal stripes
    cols_constant = (img == img[:, :1, :]).all((1, 2))
    assert rows_constant[y == 0].all() and not cols_constant[y == 0].any()
    assert cols_constant[y == 1].all() and not rows_constant[y == 1].any()
    assert not (rows_constant | cols_constant)[y >= 2].any()
    for k in range(8):  # the phase or position moves: a class is not one image repeated
        assert len({tuple(i.flatten().tolist()) for i in img[y == k]}) > 1
    noisy = deeprun.build_data(images_cfg("data.n=160", "data.n_classes=8", "data.val_fraction=0"))  # noise 1.0
    assert (noisy.x_train - x).std().item() == pytest.approx(1.0, rel=0.05)


def test_small_cnn_learns_the_images():
    result = deeprun.run(images_cfg("model=cnn", "depth=3", "width=8", "data.n=400", "epochs=20", "lr=0.01",
                                    "log.every=20"))
    assert result.summary["status"] == "completed", result.summary["error"]
    assert result.summary["val_accuracy"] >= 0.8  # 4 classes: chance is 0.25


@pytest.mark.parametrize("model_name", ["mlp", "resnet"])
def test_table_models_flatten_images(model_name):
    result = deeprun.run(images_cfg(f"model={model_name}", "depth=2", "width=8"))
    assert result.summary["status"] == "completed", result.summary["error"]
    first = models.weight_layers(result.model)["fc0" if model_name == "mlp" else "stem"]
    assert first.in_features == 16 * 16
    if model_name == "mlp":
        assert isinstance(result.model[0], nn.Flatten)
    table_mlp, _ = built("model=mlp", "data=regression", "data.n=32")
    assert not any(isinstance(m, nn.Flatten) for m in table_mlp.modules())  # tables pay for no extra module


def test_conv_model_on_a_table_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^model=cnn needs images .* data=regression is a table; use data=images, "
                                          r"or data=csv with data.image_shape=\[C,H,W\]$"):
        deeprun.compose(["model=cnn"])
    # image_shape is a CSV key: on a custom data node it is the user's function's own argument
    with pytest.raises(ConfigError, match=r"^model=cnn needs images .* data=custom is a table"):
        deeprun.compose(["model=cnn", "data=custom", "data._target_=numpy.zeros", "+data.image_shape=[1,4,4]"])
    with pytest.raises(ConfigError, match=r"data.image_size=3: must be >= 4"):
        deeprun.compose(["data=images", "data.image_size=3"])
    with pytest.raises(ConfigError, match=r"data.n_classes=9: must be in \[2, 8\]"):
        deeprun.compose(["data=images", "data.n_classes=9"])


# --- CSV rows as images -------------------------------------------------------------------------

def digits_csv(path, n: int = 150, seed: int = 0):
    """8x8 'digits': class 0 a vertical bar, 1 a horizontal bar, 2 a diagonal, at a random offset;
    pixel values 0..16 like sklearn's digits; the border columns stay blank."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = np.zeros((8, 8))
        k, o = i % 3, rng.integers(2, 6)
        if k == 0:
            img[1:7, o] = 16
        elif k == 1:
            img[o, 1:7] = 16
        else:
            img[np.arange(1, 7), np.arange(1, 7)] = 16
        img[:, 1:7] += rng.integers(0, 4, (8, 6))
        img[:, [0, 7]] = 0
        rows.append([*img.flatten().astype(int), k])
    table = pd.DataFrame(rows, columns=[f"p{j}" for j in range(64)] + ["digit"])
    table.to_csv(path, index=False)
    return table


def test_csv_rows_as_images(tmp_path):
    table = digits_csv(tmp_path / "digits.csv")
    d = deeprun.build_data(digits_cfg(tmp_path / "digits.csv"))
    assert d.x_train.shape == (120, 1, 8, 8) and (d.task, d.n_out) == ("multiclass", 3)
    assert torch.isfinite(d.x_train).all()
    # one mean and std over all training pixels: the raw pixels come back with two numbers, row-major
    train_idx, _ = data_module.split(150, 0.2, 0)
    raw = torch.tensor(table.iloc[train_idx.numpy(), :64].to_numpy(), dtype=torch.float32)
    assert torch.allclose(d.x_train.flatten(1), (raw - raw.mean()) / raw.std(), atol=1e-5)
    assert d.x_train.mean().item() == pytest.approx(0, abs=1e-5) and d.x_train.std().item() == pytest.approx(1, abs=1e-4)
    assert torch.unique(d.x_train[:, 0, :, 0]).numel() == 1  # a blank border pixel: constant, not divided by 0
    result = deeprun.run(digits_cfg(tmp_path / "digits.csv", "model=cnn", "depth=2", "width=8", "epochs=25", "lr=0.01",
                                    "log.every=25"))
    assert result.summary["status"] == "completed", result.summary["error"]
    assert result.summary["val_accuracy"] >= 0.8  # 3 classes
    assert result.summary["data.image_shape"] == "[1, 8, 8]"


def test_csv_image_shape_must_match_the_feature_columns(tmp_path):
    digits_csv(tmp_path / "digits.csv", n=20)
    cfg = digits_cfg(tmp_path / "digits.csv", "data.image_shape=[1,8,7]")
    with pytest.raises(ConfigError, match=r"^data.image_shape=\[1, 8, 7\]: 56 pixels \(C\*H\*W\), but digits.csv has "
                                          r"64 feature columns$"):
        deeprun.build_data(cfg)
    with pytest.raises(ConfigError, match=r"data.image_shape=\[8, 8\]: must be \[C, H, W\]"):
        digits_cfg(tmp_path / "digits.csv", "data.image_shape=[8,8]")


# --- probes on conv layers, through the CLI ------------------------------------------------------

def test_probes_on_a_plain_cnn_count_channel_maps():
    """dead_frac is the share of channels never positive anywhere on any sample (not of pixel units);
    saturated_frac the share of all (sample, channel, pixel) values in the tails."""
    model, data = built("model=cnn", "depth=2", "width=8", "norm=none")
    with torch.no_grad():
        model.conv0.bias[0] = -100.0  # channel 0 of conv0: never positive
    x = data.x_val[:2]
    probes = Probes(model, x)
    assert probes.names == ["conv0", "conv1", "head"]
    probes.start_epoch()
    with torch.no_grad(), probes.capture():
        model.eval()(x)
    rows = probes.read(updated=False)
    with torch.no_grad():
        a = F.relu(model.conv0(x))
    per_channel = (~(a > 0).any(dim=(0, 2, 3))).float().mean().item()
    per_unit = (~(a > 0).any(dim=0)).float().mean().item()
    assert per_channel == pytest.approx(1 / 8) and per_unit > per_channel
    assert rows[0]["dead_frac"] == pytest.approx(per_channel)
    assert rows[0]["act_mean"] == pytest.approx(a.mean().item(), rel=1e-5)


def test_cli_cnn_on_images_writes_per_layer_rows_for_conv_kernels(main, tmp_path, one_thread):
    args = ["model=cnn", "data=images", "depth=4", "width=8", "epochs=2", "data.n=100", "device=cpu",
            "log.progress=false"]
    p = main(*args)
    assert p.code == 0, p.err
    (run,) = run_dirs(tmp_path / "outputs")  # main runs deeprun in tmp_path
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["model"], summary["data"], summary["depth"]) == ("completed", "cnn", "images", 4)
    layers = pd.read_csv(run / "layers.csv")
    names = ["conv0", "conv1", "conv2", "conv3", "head"]
    assert list(layers.epoch.unique()) == [0, 1, 2]
    assert all(list(layers.name[layers.epoch == e]) == names for e in (0, 1, 2))
    # epoch 0 against an oracle: the same model at init (seeded), the full batch's kernel gradients in train
    # mode, and the activations on the validation set in eval mode
    cfg = compose(args)
    data = deeprun.build_data(cfg)
    model = deeprun.build_model(cfg, data)
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o)) for m in model.modules() if isinstance(m, nn.ReLU)]
    model.eval()
    with torch.no_grad():
        model(data.x_val)
    for h in hooks:
        h.remove()
    model.train()
    F.cross_entropy(model(data.x_train), data.y_train).backward()
    first = layers[layers.epoch == 0].set_index("name")
    for i, (conv, a) in enumerate(zip(convs(model), acts)):
        row = first.loc[f"conv{i}"]
        assert row.grad_norm == pytest.approx(conv.weight.grad.norm().item(), rel=1e-4)  # one norm per kernel tensor
        assert row.weight_norm == pytest.approx(conv.weight.norm().item(), rel=1e-5)
        assert row.act_mean == pytest.approx(a.mean().item(), rel=1e-4)
        assert row.dead_frac == pytest.approx((~(a > 0).any(dim=(0, 2, 3))).float().mean().item())
        assert math.isnan(row.saturated_frac)  # relu cannot saturate
    assert set(LAYER_COLUMNS) <= set(layers.columns)
    assert layers[layers.epoch == 2].grad_norm.gt(0).all()

