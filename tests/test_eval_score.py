"""A video's score is the mean of its views' softmax (the official merge), not the softmax of
their mean logits: crafted logits where the two orders predict different classes."""
import numpy as np
import torch

from giant.stages.evaluate import score_videos, video_score

# one confident view for class 0, two moderate views for class 1:
# mean softmax → class 1 (0.36 vs 0.61); softmax of mean logits → class 0 (3.33 vs 2.0)
LOGITS = torch.tensor([[10.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]])


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_video_score_is_mean_of_view_softmax():
    score = video_score(LOGITS)
    expected = _softmax(LOGITS.double().numpy()).mean(0)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-6)
    assert int(score.argmax()) == 1
    assert int(LOGITS.mean(0).argmax()) == 0  # the other order would predict class 0
    assert abs(float(score.sum()) - 1) < 1e-6
    assert video_score(LOGITS.half()).dtype == torch.float32  # low-precision logits scored in fp32


def test_score_videos_uses_the_per_video_score():
    class FixedLogits(torch.nn.Module):
        def forward(self, x):  # x: one video's views [V, C, T, H, W]
            assert x.shape[0] == LOGITS.shape[0]
            return LOGITS

    batch = {"video": torch.zeros(1, 3, 3, 2, 4, 4, dtype=torch.uint8), "index": torch.tensor([7]),
             "label": torch.tensor([1]), "valid": torch.tensor([True])}
    idx, label, valid, scores = score_videos(FixedLogits(), [batch], torch.device("cpu"),
                                             torch.zeros(3), torch.ones(3), 3)
    assert idx.tolist() == [7] and label.tolist() == [1] and valid.tolist() == [True]
    assert torch.allclose(scores[0], video_score(LOGITS)) and int(scores[0].argmax()) == 1
