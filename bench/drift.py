"""How far one window of training moves her traits (the drift gate's question, docs/traits.md): a
LoRA trained with `omoide train`'s trainer (rank 16, two passes) on 24 examples of each kind, on
the bundled SmolLM2-135M-Instruct with the example card, and each trait's likelihood score
(docs/traits.md) beside the plain model's:

- her own replies: the model's greedy replies to the 24 steering prompts under her card, learned
  under her card (the blandest window there is: nothing new in it);
- her card's example exchanges, repeated to 24 (what every window trains on, here alone);
- hand-written energetic replies (persona_model/traits/data/energy-train.json): a trait on purpose.

For scale: the strongest prompt instruction moves a trait by about 0.1 (docs/benchmarks.md).

    python bench/drift.py          # about 10 min here
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from persona_model.card import load_card  # noqa: E402
from persona_model.prompt import system_text  # noqa: E402
from persona_model.train.curate import persona_pairs  # noqa: E402
from persona_model.train.sft import SftSettings, train  # noqa: E402
from persona_model.traits import Pole, bundled_traits, steering_prompts  # noqa: E402
from persona_model.traits.lora import distill_examples, written_examples  # noqa: E402
from persona_model.traits.measure import likelihood_score  # noqa: E402
from runtime.models import bundled_llm  # noqa: E402


def main() -> None:
    base = bundled_llm(Path("~/.cache/omoide/models").expanduser())
    persona, _ = load_card(ROOT / "persona_model/characters/komorebi.json")
    card = system_text(persona, "Chat")
    tok = AutoTokenizer.from_pretrained(base)
    traits = bundled_traits()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    before = {n: likelihood_score(plain, tok, card, t).score for n, t in traits.items()}

    def rows(pairs: list[tuple[str, str]], kind: str) -> list[dict[str, object]]:
        return [{"messages": [{"role": "system", "content": card}, {"role": "user", "content": u},
                              {"role": "assistant", "content": a}], "kind": kind} for u, a in pairs]

    examples = persona_pairs(persona.examples, persona.name)
    sets = {
        "her own replies": distill_examples(plain, tok, card, Pole("plain", "Reply to the viewer."), steering_prompts()),
        "her card's example exchanges": rows((examples * 24)[:24], "persona"),
        "hand-written energetic replies": written_examples(card, "energy"),
    }
    print(f"{'trained on':<32}{'steps':>6}{'s':>6}  " + "".join(f"{n:>10}" for n in traits))
    print(f"{'(plain model: the scores)':<32}{'':>6}{'':>6}  " + "".join(f"{before[n]:>+10.3f}" for n in traits))
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in sets.items():
            folder = Path(tmp) / str(len(list(Path(tmp).iterdir())))
            folder.mkdir()
            (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
            t0 = time.perf_counter()
            result = train(base, folder / "train.jsonl", folder / "adapter", SftSettings(epochs=2.0), progress=False)
            seconds = time.perf_counter() - t0
            lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(result.adapter)).eval()
            moved = {n: likelihood_score(lora, tok, card, t).score - before[n] for n, t in traits.items()}
            print(f"{name:<32}{result.steps:>6}{seconds:>6.0f}  " + "".join(f"{moved[n]:>+10.3f}" for n in traits))


if __name__ == "__main__":
    main()
