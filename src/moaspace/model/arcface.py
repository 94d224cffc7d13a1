"""ArcFace: additive angular margin logits on the unit sphere.

ArcFace (Deng et al. 2019) replaces the true-class logit ``s * cos(theta)``
by ``s * cos(theta + m)``: to be classified correctly an embedding must lie
``m`` radians closer to its class centre than to any other, which makes
classes compact and separated by angle, exactly the geometry a cosine kNN
exploits. Using it at two levels (MoA with a large margin, compound with a
small one) is what gives the latent space its hierarchy: compounds form tight
clusters inside MoA clusters.

Margins are in **radians**. When ``theta + m > pi``, ``cos(theta + m)``
would start to *increase* with theta (the penalty would reward moving away
from the class), so the standard fix replaces it by ``cos(theta) - m sin(m)``,
which stays monotonic (the insightface ``th``/``mm`` formulation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-7


class ArcFace(nn.Module):
    """Margin head: embeddings ``(n, d)`` -> logits ``(n, n_classes)``.

    Parameters
    ----------
    embedding_dim, n_classes
        Input width and number of classes.
    margin
        Additive angular margin ``m`` in radians (ignored if ``class_margins``).
    scale
        Logit scale ``s``: with unit vectors, logits lie in ``[-s, s]``, and a
        scale of ~30 makes the softmax sharp enough to train.
    sub_centers
        ``k`` centres per class, the logit uses the closest (sub-centre
        ArcFace): a MoA whose compounds act in distinct ways need not be
        squeezed onto one direction.
    easy_margin
        Apply the margin only when ``cos(theta) > 0`` (off by default).
    class_margins
        Optional per-class margins (radians), shape ``(n_classes,)``, e.g.
        larger margins for rare classes.
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        margin: float = 0.25,
        scale: float = 30.0,
        sub_centers: int = 1,
        easy_margin: bool = False,
        class_margins: torch.Tensor | None = None,
    ):
        super().__init__()
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        self.n_classes = int(n_classes)
        self.sub_centers = int(sub_centers)
        self.scale = float(scale)
        self.easy_margin = bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(self.n_classes * self.sub_centers, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        if class_margins is None:
            margins = torch.full((self.n_classes,), float(margin))
        else:
            margins = torch.as_tensor(class_margins, dtype=torch.float32).flatten()
            if margins.numel() != self.n_classes:
                raise ValueError(
                    f"class_margins has {margins.numel()} values for {self.n_classes} classes"
                )
        if (margins < 0).any() or (margins >= math.pi / 2).any():
            raise ValueError("margins must be in [0, pi/2) radians")
        self.register_buffer("margins", margins.float())

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each row of ``embeddings`` to each class (closest sub-centre), float32."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = F.linear(
                F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1)
            )
        if self.sub_centers > 1:
            cos = cos.view(cos.shape[0], self.n_classes, self.sub_centers).amax(dim=2)
        return cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits of ``embeddings``; with ``labels`` the true-class logit gets the margin."""
        cos = self.cosine(embeddings)
        if labels is None:
            return self.scale * cos
        labels = labels.long()
        cos_t = cos.gather(1, labels[:, None]).squeeze(1).clamp(-1.0, 1.0)
        m = self.margins[labels]
        # clamp keeps d sin/d cos finite at theta = 0 and pi
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(_EPS))
        phi = cos_t * torch.cos(m) - sin_t * torch.sin(m)
        if self.easy_margin:
            phi = torch.where(cos_t > 0, phi, cos_t)
        else:
            # theta + m > pi  <=>  cos(theta) < cos(pi - m): use the monotonic extension
            phi = torch.where(cos_t > torch.cos(math.pi - m), phi, cos_t - m * torch.sin(m))
        one_hot = F.one_hot(labels, self.n_classes).to(cos.dtype)
        logits = cos + one_hot * (phi - cos_t)[:, None]
        return self.scale * logits

    def _with_margin(self, cos: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
        """``cos(theta + m)`` of cosines ``cos`` (any shape broadcasting with ``margins``),
        with the monotonic extension beyond ``pi - m``."""
        cos = cos.clamp(-1.0, 1.0)
        sin = torch.sqrt((1.0 - cos * cos).clamp_min(_EPS))
        phi = cos * torch.cos(margins) - sin * torch.sin(margins)
        if self.easy_margin:
            return torch.where(cos > 0, phi, cos)
        return torch.where(cos > torch.cos(math.pi - margins), phi, cos - margins * torch.sin(margins))

    def multi_positive_loss(self, embeddings: torch.Tensor, positives: torch.Tensor
                            ) -> torch.Tensor:
        """Per-row ArcFace loss of rows with several true classes (``positives``: bool
        ``(n, n_classes)``, at least one True per row).

        Each positive ``p`` is a cross-entropy term with the margin on ``p`` and the
        row's *other* positives left out of the denominator, and a row's loss is the
        mean over its positives: the row is pulled towards every MoA it has, and no
        positive is pushed away as another's negative. With one positive it is the
        ordinary ArcFace cross-entropy.

        Parameters
        ----------
        embeddings : torch.Tensor
            ``(n, embedding_dim)`` rows (normalised here).
        positives : torch.Tensor
            Bool ``(n, n_classes)``: each row's MoAs.
        """
        positives = positives.bool()
        cos = self.cosine(embeddings)
        pos_logit = self.scale * self._with_margin(cos, self.margins[None, :])
        neg = (self.scale * cos).masked_fill(positives, float("-inf"))
        neg_lse = torch.logsumexp(neg, dim=1, keepdim=True)  # -inf when every class is positive
        per = torch.logaddexp(pos_logit, neg_lse) - pos_logit
        per = per.masked_fill(~positives, 0.0)
        return per.sum(dim=1) / positives.sum(dim=1).clamp_min(1)


def count_margins(counts, margin: float, power: float = 0.25) -> torch.Tensor:
    """Per-class margins proportional to ``n ** -power`` (LDAM) for the class sizes ``counts``,
    the largest equal to ``margin`` (radians).

    Rare MoAs get the full margin, common ones less: the common classes
    already dominate the loss and need no extra push.
    """
    n = torch.as_tensor(counts, dtype=torch.float32).clamp_min(1)
    raw = n.pow(-power)
    return raw / raw.max() * float(margin)
