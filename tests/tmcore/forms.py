"""Weak forms shared by the tmcore tests."""

from tmcore import ElementAssembler, NodeAssembler
class Laplace(ElementAssembler):
    """kappa grad u . grad v"""

    def forward(self, gradu, gradv, kappa):
        return kappa * (gradu @ gradv)


class Source(NodeAssembler):
    """f v"""

    def forward(self, v, f):
        return f * v
