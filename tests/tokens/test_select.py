import torch

from vitdeploy.tokens import select


def test_rank_selection_equals_topk_including_order():
    g = torch.Generator().manual_seed(0)
    for n, k in [(16, 5), (196, 137), (50, 1), (9, 9)]:
        scores = torch.rand(4, n, generator=g)
        x = torch.randn(4, n, 8, generator=g)
        kept_topk, mask_topk = select.select_tokens(x, scores, k, "topk")
        kept_rank, mask_rank = select.select_tokens(x, scores, k, "rank")
        assert torch.equal(kept_topk, kept_rank)
        assert torch.equal(mask_topk, mask_rank)
        assert torch.equal(mask_rank.sum(1), torch.full((4,), float(k)))


def test_rank_breaks_ties_towards_the_lower_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5]])
    onehot = select.rank_onehot(scores, 3)
    assert onehot.argmax(-1).tolist() == [[1, 0, 2]]


class RankSelect(torch.nn.Module):
    def forward(self, scores, x):
        return select.select_tokens(x, scores, 3, "rank")[0]


def test_rank_selection_uses_no_sort():
    program = torch.export.export(RankSelect(), (torch.rand(2, 10), torch.randn(2, 10, 4)))
    ops = " ".join(str(n.target) for n in program.graph.nodes if n.op == "call_function")
    assert "topk" not in ops and "sort" not in ops
    assert "aten.matmul" in ops or "aten.bmm" in ops


def test_package_token_is_the_score_weighted_mean_of_dropped_tokens():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 3, generator=g)
    scores = torch.rand(2, 7, generator=g)
    _, mask = select.select_tokens(x, scores, 3)
    got = select.package_token(x, scores, mask)
    for b in range(2):
        dropped = [i for i in range(7) if mask[b, i] == 0]
        weights = scores[b, dropped]
        want = (weights[:, None] * x[b, dropped]).sum(0) / weights.sum()
        torch.testing.assert_close(got[b, 0], want)


def test_fixed_positions_gather_the_same_tokens_for_every_sample():
    x = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    kept = select.gather_fixed(x, torch.tensor([4, 0]))
    assert torch.equal(kept, x[:, [4, 0]])


def test_cls_attention_is_the_head_mean_of_the_class_row():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    full = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1)
    torch.testing.assert_close(select.cls_attention(q[:, :, :1], k, 0.5), full[:, :, 0].mean(1))
