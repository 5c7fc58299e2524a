import time

import pytest
import torch
from transformers import AutoTokenizer

from fedlease.data.instructions import InstructionClientData, InstructionExample
from fedlease.model.causal_lm import load_causal_lm
from fedlease.model.lora import AdapterLayout, init_lora
from fedlease.tasks.generation import GenerationTrainer, encode, normalize_answer, rouge_l

CHAT = ("{% for m in messages %}user : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}")


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def words(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_encode_cuts_the_input_never_the_instruction_or_answer(tokenizer):
    example = InstructionExample("which color is named ?", "the a of and to red", "red")
    full = encode(tokenizer, example, max_length=64, max_new_tokens=4)
    assert words(tokenizer, full.answer) == ["red", "</s>"]
    assert words(tokenizer, full.prompt) == [
        "###", "Instruction", ":", "which", "color", "is", "named", "?", "###", "Input", ":",
        "the", "a", "of", "and", "to", "red", "###", "Response", ":"]
    cut = encode(tokenizer, example, max_length=len(full.prompt) - 2, max_new_tokens=4)
    assert len(cut.prompt) == len(full.prompt) - 2
    kept = words(tokenizer, cut.prompt)
    assert kept == words(tokenizer, full.prompt)[:15] + ["###", "Response", ":"]
    assert words(tokenizer, encode(tokenizer, example, 64, 1).answer) == ["red"]
    with pytest.raises(ValueError, match="model.max_length = 8 tokens leaves no room"):
        encode(tokenizer, example, max_length=8, max_new_tokens=4)


def test_chat_template_prompt_is_the_template_rendering(tokenizer):
    chat = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    chat.chat_template = CHAT
    example = InstructionExample("which color is named ?", "the red", "red")
    encoded = encode(chat, example, max_length=64, max_new_tokens=4)
    assert words(chat, encoded.prompt) == [
        "user", ":", "which", "color", "is", "named", "?", "the", "red", "assistant", ":"]


def test_exact_match_and_rouge_l():
    assert normalize_answer(" Positive. ") == "positive"
    assert rouge_l("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert rouge_l("the cat sat", "a cat") == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert rouge_l("positive", "") == 0.0


def cue_client(n_train=16, n_test=4):
    def examples(n, offset):
        return [InstructionExample("which color is named ?",
                                   f"the {'of a' if i % 3 else 'and'} {('red', 'blue')[i % 2]}",
                                   ("red", "blue")[i % 2]) for i in range(offset, offset + n)]
    return InstructionClientData("colors-0", "colors", examples(n_train, 0),
                                 examples(n_test, n_train))


def lora_state(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (d_in, d_out) in model.adapter_shapes().items():
        state[f"adapter.{name}.lora_A"], state[f"adapter.{name}.lora_B"] = init_lora(
            d_in, d_out, 4, gen)
    return state


def test_loss_is_the_answer_tokens_cross_entropy(tiny_llama_dir, tokenizer):
    """The same number as the model's own next-token loss with the prompt masked out."""
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 4, 16, 0.0)
    client = cue_client(n_train=3)
    trainer = GenerationTrainer(model, tokenizer, client, max_length=32, max_new_tokens=3,
                                batch_size=3, local_epochs=1, lr=1e-2, weight_decay=0.0)
    model.load_state(lora_state(model), AdapterLayout())
    with torch.no_grad():
        inputs, targets = next(trainer.batches("train", torch.arange(3)))
        ours = trainer.loss(inputs, targets)
        total, tokens = 0.0, 0
        for item in trainer.splits["train"]:
            ids = torch.tensor([item.prompt + item.answer])
            labels = torch.tensor([[-100] * len(item.prompt) + item.answer])
            total += model.backbone(input_ids=ids, labels=labels).loss * len(item.answer)
            tokens += len(item.answer)
        reference = total / tokens
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


def test_loss_over_answers_of_different_lengths_ignores_prompt_and_padding(tiny_llama_dir,
                                                                          tokenizer):
    """Answers of 1, 2 and 3 words (+ end-of-sequence) after prompts of different lengths, in
    one left-padded batch: the loss is the mean over the 3 examples of each one's mean over its
    answer tokens of -log p(token) (an example's weight does not depend on its batch-mates), each
    row's log-probabilities computed alone, without padding."""
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 4, 16, 0.0)
    rows = [("which color is named ?", "the red", "red"),
            ("which animal is named ?", "a cat and the dog of it", "cat dog"),
            ("which color is named ?", "", "red blue red")]
    examples = [InstructionExample(*row) for row in rows]
    client = InstructionClientData("c", "t", examples, examples[:1])
    trainer = GenerationTrainer(model, tokenizer, client, max_length=32, max_new_tokens=4,
                                batch_size=3, local_epochs=1, lr=1e-2, weight_decay=0.0)
    items = trainer.splits["train"]
    assert [len(it.answer) for it in items] == [2, 3, 4]
    assert len({len(it.prompt) for it in items}) == 3
    model.load_state(lora_state(model, seed=3), AdapterLayout())
    model.eval()
    with torch.no_grad():
        inputs, targets = trainer.collate(items, with_answer=True)
        ours = trainer.loss(inputs, targets)
        nll = []
        for it in items:
            logits = model.backbone(input_ids=torch.tensor([it.prompt + it.answer])).logits[0]
            logp = torch.log_softmax(logits, -1)
            # token j is predicted at the position before
            nll.append(torch.stack([-logp[len(it.prompt) + j - 1, token]
                                    for j, token in enumerate(it.answer)]))
        reference = torch.stack([example.mean() for example in nll]).mean()
    assert sum(len(example) for example in nll) == 9
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_training_fits_the_answers_and_evaluation_scores_them(tiny_llama_dir, tokenizer):
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 4, 16, 0.0)
    trainer = GenerationTrainer(model, tokenizer, cue_client(), max_length=32,
                                max_new_tokens=3, batch_size=8, local_epochs=3, lr=3e-2,
                                weight_decay=0.0)
    assert trainer.num_train == 16 and trainer.new_head(0) == {}
    state, layout = lora_state(model), AdapterLayout()
    inputs, targets = next(trainer.batches("train", torch.arange(16)))
    with torch.no_grad():
        model.load_state(state, layout)
        loss_before = trainer.loss(inputs, targets).item()
    trained, metrics = trainer.train(state, layout, seed=0)
    with torch.no_grad():
        model.load_state(trained, layout)
        loss_after = trainer.loss(inputs, targets).item()
    assert set(trained) == set(state)  # adapters only, no head
    assert metrics["train_steps"] == 6
    assert loss_after < loss_before
    before = time.perf_counter()
    result = trainer.evaluate(trained, layout, on="train")
    assert 0 <= result["eval_seconds"] <= time.perf_counter() - before
    assert set(result) == {"rouge_l", "exact_match", "eval_seconds"}  # no exact match as accuracy
    assert 0.0 <= result["exact_match"] <= result["rouge_l"] <= 1.0


def test_evaluation_scores_the_greedy_answers(tiny_llama_dir, tokenizer, monkeypatch):
    model, _ = load_causal_lm(str(tiny_llama_dir), ["q_proj", "v_proj"], 4, 16, 0.0)
    trainer = GenerationTrainer(model, tokenizer, cue_client(n_test=4), max_length=32,
                                max_new_tokens=3, batch_size=3, local_epochs=1, lr=1e-2,
                                weight_decay=0.0)
    # references: red, blue, red, blue (test examples 16..19)
    answers = iter([["Red.", "blue", "the red"], ["of"]])
    monkeypatch.setattr(trainer, "predict", lambda items: next(answers))
    result = trainer.evaluate(lora_state(model), AdapterLayout())
    assert result["exact_match"] == pytest.approx(2 / 4)
    assert result["rouge_l"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
