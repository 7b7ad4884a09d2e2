"""ProtoSeg (metaedge/methods/segment.py) on the dense FCN backbone (metaedge/models/fcn.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaedge import kernels
from metaedge.errors import MetaedgeError
from metaedge.evaluate_segment import score_masks
from metaedge.methods import create_method
from metaedge.methods.segment import mask_iou, segmentation_loss
from metaedge.models import create_backbone


def _method(decoder: bool = True, width: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    method = create_method("protoseg", create_backbone("fcn", in_channels=3, width=width), decoder=decoder)
    return method.eval()


def _reference(seed: int = 0) -> torch.Tensor:
    """(1, 3, 32, 32): a random coloured scribble on black, as a reference is."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 8:24, 10:20] = torch.rand(1, 3, 16, 10, generator=g) * (torch.rand(1, 1, 16, 10, generator=g) > 0.6)
    return x


def test_shapes():
    method = _method()
    scenes = torch.rand(2, 3, 96, 96)
    features = method.dense(scenes)
    assert features.shape == (2, method.backbone.embedding_dim, 24, 24)
    assert method.stride == 4
    protos = method.embed(torch.cat([_reference(0), _reference(1), _reference(2)]))
    assert protos.shape == (3, method.backbone.embedding_dim)
    for use_decoder in (True, False):
        logits = method.mask_logits(scenes, protos[None].expand(2, -1, -1), use_decoder=use_decoder)
        assert logits.shape == (2, 3, 96, 96)
    # other scene sizes (multiples of 4) go through the same graph
    assert method.mask_logits(torch.rand(1, 3, 64, 128), protos[None, :1]).shape == (1, 1, 64, 128)


def test_masked_pooling_ignores_the_background():
    method = _method()
    ref = _reference()
    with torch.no_grad():
        padded = F.pad(ref, (32, 32, 32, 32))  # centred on a black 96x96 canvas, as scenes are
        features = method.backbone(padded)  # (1, D, 24, 24)
        ink = (padded.amax(dim=1, keepdim=True) > 0).float()
        weight = F.avg_pool2d(ink, 4)
        expected = (features * weight).sum(dim=(2, 3)) / weight.sum()
        torch.testing.assert_close(method.embed(ref), expected)
        # not the plain mean over the map: the black cells around the character do not count
        assert not torch.allclose(method.embed(ref), features.mean(dim=(2, 3)), atol=1e-4)


def test_k_shot_prototype_is_the_mean():
    method = _method()
    refs = torch.stack([torch.cat([_reference(0), _reference(1)])])  # (1, K=2, 3, 32, 32)
    with torch.no_grad():
        both = method.embed(refs[0])
        torch.testing.assert_close(method.prototypes(refs)[0, 0], both.mean(dim=0))


def test_cosine_map_is_the_native_logits_kernel():
    """The device scores the map's H*W cells as queries with kernels.logits: the same numbers as training's."""
    method = _method()
    with torch.no_grad():
        features = method.dense(torch.rand(1, 3, 96, 96))
        protos = method.embed(torch.cat([_reference(0), _reference(1)]))
        cosine = method.cosine(features, protos[None])[0]  # (2, 24, 24)
    queries = features[0].permute(1, 2, 0).reshape(-1, features.shape[1]).numpy()
    scores = kernels.logits(queries, protos.numpy(), metric="cosine", scale=1.0)  # (576, 2)
    np.testing.assert_allclose(scores.T.reshape(2, 24, 24), cosine.numpy(), atol=1e-5)


def test_decoding_classes_together_equals_one_by_one():
    """Export decodes every enrolled class in one batch: each class's mask must not depend on the others."""
    method = _method()
    scene = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        protos = method.embed(torch.cat([_reference(s) for s in range(3)]))[None]
        together = method.mask_logits(scene, protos)
        for c in range(3):
            torch.testing.assert_close(method.mask_logits(scene, protos[:, c : c + 1])[:, 0], together[:, c])


def test_decoder_free_model():
    method = _method(decoder=False)
    assert method.decoder is None and method.config() == {"decoder": False, "init_scale": 10.0, "context": 96}
    with pytest.raises(MetaedgeError, match="without a decoder"):
        method.mask_logits(torch.rand(1, 3, 96, 96), torch.rand(1, 1, 16), use_decoder=True)
    with pytest.raises(MetaedgeError, match="dense backbone"):
        create_method("protoseg", create_backbone("conv4", in_channels=3, width=8))


def test_loss_and_iou_values():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    perfect = (target * 2 - 1) * 50
    assert segmentation_loss(perfect, target).item() < 1e-6
    assert segmentation_loss(-perfect, target).item() > 1.0
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[0, :2, :3] = True
    assert mask_iou(pred, target[:, 0] > 0).item() == pytest.approx(4 / 6)
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).item() == 1.0


def test_score_masks_iou_and_localisation():
    truth = np.zeros((3, 20, 20), dtype=bool)
    truth[:, 5:10, 5:10] = True
    prob = np.zeros((3, 20, 20), dtype=np.float32)
    prob[0, 5:10, 5:10] = 0.31  # above the 0.3 threshold: exact
    prob[1, 5:10, 5:15] = 0.9  # twice the area, centre 2.5 px off: IoU 0.5, still localised
    prob[2, 5:10, 5:10] = 0.29  # below the threshold: empty prediction
    iou, hit = score_masks(prob, truth)
    np.testing.assert_allclose(iou, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(hit, [1.0, 1.0, 0.0])
    far = np.zeros((1, 20, 20), dtype=np.float32)
    far[0, 5:10, 11:16] = 1.0  # 6 px to the right: not localised
    assert score_masks(far, truth[:1])[1][0] == 0.0


def test_a_few_steps_learn():
    """On one fixed batch the loss falls: gradients reach every part that should learn."""
    method = _method(width=8).train()
    g = torch.Generator().manual_seed(0)
    scenes = (torch.rand(4, 3, 96, 96, generator=g) > 0.97).float()
    masks = torch.zeros(4, 96, 96, dtype=torch.bool)
    masks[:, 40:56, 40:56] = scenes[:, 0, 40:56, 40:56] > 0
    refs = torch.stack([_reference(s)[None, 0] for s in range(4)])  # (4, 1, 3, 32, 32)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss, _ = method.episode_loss(scenes, masks, refs)
        loss.mean().backward()
        optimizer.step()
        losses.append(loss.mean().item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(p.grad is not None for n, p in method.named_parameters() if p.requires_grad), "a part gets no gradient"
