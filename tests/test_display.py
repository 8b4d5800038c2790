import pytest

from labkit.display import MAX_TAKEAWAYS, Takeaways, takeaways, token_chips


def test_takeaways_render_as_a_markdown_list_in_order():
    shown = takeaways("LoRA trained 0.52% of the weights.", "  It scored 0.91.  ")
    assert shown.sentences == ("LoRA trained 0.52% of the weights.", "  It scored 0.91.  ")
    assert shown._repr_markdown_() == "**Takeaways**\n\n- LoRA trained 0.52% of the weights.\n- It scored 0.91."
    assert str(shown) == repr(shown) == "- LoRA trained 0.52% of the weights.\n- It scored 0.91."


@pytest.mark.parametrize("sentences, message", [
    ((), "expected 1 to"),
    (("x",) * (MAX_TAKEAWAYS + 1), f"got {MAX_TAKEAWAYS + 1}"),
    (("fine", "  "), "takeaway 1 is '  '"),
    (("fine", 0.5), "takeaway 1 is 0.5"),
])
def test_takeaways_reject_an_empty_or_overlong_list(sentences, message):
    with pytest.raises(ValueError, match=message):
        Takeaways(sentences)


class _CharTokenizer:
    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_token_chips_mark_the_trained_tokens_and_show_whitespace():
    chips = token_chips(_CharTokenizer(), [ord("a"), ord(" "), ord("\n")], trained=[0, 1, 1])
    assert chips.count("background:#b7e4c7") == 2 and chips.count("background:#eee") == 1
    assert "·" in chips and "↵" in chips and "green = in the loss" in chips


def test_token_chips_reject_a_trained_mask_of_another_length():
    with pytest.raises(ValueError, match="trained has 1 entries for 2 tokens"):
        token_chips(_CharTokenizer(), [97, 98], trained=[1])
