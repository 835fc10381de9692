"""Evaluation metrics with exact expected values: zero-shot top-k, retrieval recall (also with duplicate captions),
and the gathering of uneven per-rank results across two processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_unified.training.outputs.evaluation import gather_rows, retrieval_recall, zero_shot_accuracy

# similarity[i, j] of image i and text j, chosen by hand.
SIMILARITY = torch.tensor(
    [
        [0.9, 0.1, 0.0, 0.15],  # image 0: its text first
        [0.8, 0.3, 0.1, 0.0],  # image 1: its text second
        [0.1, 0.2, 0.3, 0.4],  # image 2: its text second
        [0.0, 0.25, 0.5, 0.2],  # image 3: its text third
    ]
)


def _pairs():
    # image_embeds @ text_embeds.T == SIMILARITY with text_embeds = identity
    return SIMILARITY.clone(), torch.eye(4)


def test_retrieval_recall_on_a_hand_made_similarity_matrix():
    images, texts = _pairs()
    results = retrieval_recall(images, texts, ["a", "b", "c", "d"], ks=(1, 2, 3))
    # image -> text, rank of the right text per row: 1, 2, 2, 3
    assert results["image_to_text_R@1"] == 0.25
    assert results["image_to_text_R@2"] == 0.75
    assert results["image_to_text_R@3"] == 1.0
    # text -> image, per column: text 0 and 1 find their image first; text 2 ranks image 3 (0.5) before image 2
    # (0.3); text 3 ranks image 2 (0.4) before image 3 (0.2).
    assert results["text_to_image_R@1"] == 0.5
    assert results["text_to_image_R@2"] == 1.0


def test_identical_captions_count_as_the_same_text():
    images, texts = _pairs()
    # Items 2 and 3 share a caption: image 2's best text (text 3) and image 3's (text 2) now match, and so do
    # texts 2 and 3's best images; image 1's best text is still text 0.
    results = retrieval_recall(images, texts, ["a", "b", "same", "same"], ks=(1,))
    assert results["image_to_text_R@1"] == 0.75
    assert results["text_to_image_R@1"] == 1.0
    with pytest.raises(ValueError, match="as many images as texts"):
        retrieval_recall(images, texts[:3], ["a", "b", "c", "d"])


def test_zero_shot_top_k_on_hand_made_scores():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.4, 0.5, 0.3], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 2, 0, 0])
    results = zero_shot_accuracy(scores, labels, torch.eye(3), ks=(1, 2, 5))
    assert results["top1_accuracy"] == 0.5  # rows 0 and 1
    assert results["top2_accuracy"] == 0.75  # + row 2 (its label second); row 3's label is last
    assert results["top3_accuracy"] == 1.0  # k is capped at the number of classes


def _gather_worker(rank, world_size, port, result_file):
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rows = SIMILARITY[:3] if rank == 0 else SIMILARITY[3:]  # uneven: 3 and 1 rows
    gathered = gather_rows(accelerator, rows)
    np.savez(result_file, gathered=gathered.numpy(), processes=np.array(accelerator.num_processes))
    # Leave together: a rank whose peer has already gone aborts in gloo's teardown (seen under load).
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def test_uneven_rank_rows_gather_in_rank_order(run_gloo_workers):
    results = run_gloo_workers(_gather_worker, 2)
    for result in results:
        assert int(result["processes"]) == 2
        np.testing.assert_array_equal(result["gathered"], SIMILARITY.numpy())
