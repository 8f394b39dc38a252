import pytest

from adapter_retrievers import Corpus
from adapter_retrievers.synth import build_prompt, generate_queries, parse_queries

CORPUS = Corpus.from_texts([f"Document {i} explains topic {i} in depth." for i in range(8)])


def test_parse_drops_preambles_numbering_and_duplicates():
    answer = """Here are two questions:
1. What does topic 3 explain?
2) "how deep is topic 3"
- What does topic 3 explain?
Queries:
ok
* why topic three matters"""
    assert parse_queries(answer, 5) == ["What does topic 3 explain?", "how deep is topic 3", "why topic three matters"]
    assert parse_queries(answer, 1) == ["What does topic 3 explain?"]


def test_prompt_is_steered_by_examples_and_description():
    prompt = build_prompt("DOC", 3, "a helpdesk bot", ["reset my password", "vpn broken"])
    assert "a helpdesk bot" in prompt and "- vpn broken" in prompt and "Write 3 different queries" in prompt


def test_langchain_fake_chat_model_with_resume(tmp_path):
    pytest.importorskip("langchain_core")
    from langchain_core.language_models import FakeListChatModel

    responses = [f"Here are the queries:\n1. question {i} about it\n2. another question {i}" for i in range(20)]
    llm = FakeListChatModel(responses=responses)
    out = tmp_path / "synth.jsonl"
    first, report = generate_queries(CORPUS, llm, out, max_chunks=3, progress=False)
    assert report.chunks_done == 3 and first.n_pairs == 6 and len(first) == 6
    assert all(not q.lower().startswith("here are") for q in first.queries.values())
    again, report2 = generate_queries(CORPUS, llm, out, max_chunks=5, progress=False)
    assert report2.chunks_resumed == 3 and report2.chunks_done == 2  # only the missing chunks were asked
    assert again.n_pairs == 10


def test_llamaindex_llm_failures_and_rate_limit(tmp_path):
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata

    class CannedLLM(CustomLLM):
        calls: int = 0

        @property
        def metadata(self):
            return LLMMetadata()

        def complete(self, prompt, formatted=False, **kwargs):
            self.calls += 1
            if "Document 2 " in prompt:
                raise RuntimeError("provider timeout")
            return CompletionResponse(text="What is covered here?\nWhat is covered here?")

        def stream_complete(self, prompt, formatted=False, **kwargs):
            raise NotImplementedError

    llm = CannedLLM()
    ts, report = generate_queries(
        CORPUS, llm, tmp_path / "s.jsonl", max_chunks=8, requests_per_second=200, concurrency=2, progress=False
    )
    assert llm.calls == 8 and list(report.failed_chunks) == ["doc-2"]
    assert ts.n_pairs == 1 and report.duplicates_dropped == 6  # the same query for every chunk is kept once


def test_extractive_questions_end_on_a_whole_word():
    from adapter_retrievers.synth import extractive_llm

    sentence = "La resolución fue aprobada por el consejo tras un largo debate sobre las sanciones " * 3
    prompt = build_prompt(sentence.strip() + ". Otra frase corta sin interés aquí presente.", 1)
    question = extractive_llm(prompt)
    assert question.endswith("?") and len(question) <= 121
    assert sentence.startswith(question[:-1]) and sentence[len(question) - 1] == " "  # cut between two words
