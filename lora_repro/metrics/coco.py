"""METEOR 1.5, ROUGE-L and CIDEr through pycocoevalcap 1.2, run the way the E2E scorer runs them.

``measure_scores.py`` builds COCO caption objects and calls ``COCOEvalCap`` (METEOR, ROUGE_L and
CIDEr only): every reference and output goes through the Stanford PTB tokeniser jar
(``-preserveLines -lowerCase``) with COCO's punctuation tokens dropped, then METEOR 1.5 is fed
``SCORE ||| refs ||| hyp`` lines over ``-stdio -l en -norm`` and the corpus score is the jar's
``EVAL`` aggregate (not a mean of segment scores), while ROUGE-L (beta 1.2) and CIDEr-D
(corpus document frequencies) are pycocoevalcap's Python code on the same tokens.

The jars and Python scorers are pycocoevalcap's own; this module only changes how often Java
starts. pycocoevalcap tokenises references and outputs in two JVM runs and writes its temp file
into site-packages; here one PTB run covers both (each line is tokenised on its own, so the
tokens are the same), the temp file lives in a private temp dir, and METEOR runs once per call.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor import meteor as _pycoco_meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer as _pycoco_ptb

# pycocoevalcap is a namespace package: locate the jars next to the modules that use them.
PTB_JAR = Path(_pycoco_ptb.__file__).resolve().parent / _pycoco_ptb.STANFORD_CORENLP_3_4_1_JAR
METEOR_JAR = Path(_pycoco_meteor.__file__).resolve().parent / _pycoco_meteor.METEOR_JAR
_PUNCTUATION = frozenset(_pycoco_ptb.PUNCTUATIONS)


class JavaNotFoundError(RuntimeError):
    """Raised when METEOR or the PTB tokeniser is needed and no ``java`` is on PATH."""


def require_java() -> str:
    """Path of the ``java`` executable, or a JavaNotFoundError that says how to get one."""
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(
            "METEOR 1.5 and the Stanford PTB tokenizer (pycocoevalcap's jars) need a Java runtime, "
            "but no `java` is on PATH. Install one (Debian/Ubuntu: `apt-get install "
            "default-jre-headless`) or put its bin/ directory on PATH."
        )
    return java


def _run_java(args: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([require_java(), *args], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
    return proc


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """PTB-tokenise, lower-case and strip COCO punctuation, one output string per sentence.

    Same command and post-processing as pycocoevalcap's PTBTokenizer, for any number of
    sentences in one JVM run. Newlines inside a sentence become spaces, as there.
    """
    if not sentences:
        return []
    with tempfile.TemporaryDirectory(prefix="lora-repro-ptb-") as tmp:
        path = Path(tmp) / "sentences.txt"
        path.write_bytes("\n".join(s.replace("\n", " ") for s in sentences).encode("utf-8"))
        proc = _run_java(
            ["-cp", str(PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", str(path)],
            "the Stanford PTB tokenizer",
        )
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(sentences):
        raise RuntimeError(f"the PTB tokenizer returned {len(lines)} lines for "
                           f"{len(sentences)} sentences")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in _PUNCTUATION)
            for line in lines[: len(sentences)]]


def meteor_corpus(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> float:
    """METEOR 1.5 (``-l en -norm``) corpus score of tokenised ``hyps``, pycocoevalcap-style.

    One ``SCORE`` line per instance gives its sufficient statistics; one ``EVAL`` line over all of
    them gives the segment scores and then the corpus score, which is what COCOEvalCap reports.
    """
    cmd = [require_java(), "-jar", "-Xmx2G", str(METEOR_JAR),
           "-", "-", "-stdio", "-l", "en", "-norm"]
    with tempfile.TemporaryFile() as err, subprocess.Popen(
        cmd, cwd=METEOR_JAR.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None

        def send(line: str) -> None:
            proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()

        def receive() -> str:
            answer = proc.stdout.readline()
            if not answer:
                err.seek(0)
                raise RuntimeError("METEOR 1.5 stopped unexpectedly: "
                                   f"{err.read().decode('utf-8', 'replace')[-2000:]}")
            return answer.decode("utf-8").strip()

        stats = []
        for hyp, inst_refs in zip(hyps, refs, strict=True):
            hyp = hyp.replace("|||", "").replace("  ", " ")
            send(" ||| ".join(("SCORE", " ||| ".join(inst_refs), hyp)))
            stats.append(receive())
        send(" ||| ".join(["EVAL", *stats]))
        for _ in stats:  # one score per segment comes first
            receive()
        score = float(receive())
        proc.stdin.close()
    return score


def coco_scores(refs: Sequence[Sequence[str]], hyps: Sequence[str]) -> dict[str, float]:
    """METEOR, ROUGE_L and CIDEr of raw ``hyps`` against raw ``refs`` (one list per instance)."""
    require_java()
    flat_refs = [r for inst in refs for r in inst]
    tokens = ptb_tokenize(flat_refs + list(hyps))
    gts: dict[int, list[str]] = {}
    start = 0
    for i, inst in enumerate(refs):
        gts[i] = tokens[start : start + len(inst)]
        start += len(inst)
    res = {i: [tokens[len(flat_refs) + i]] for i in range(len(hyps))}
    return {
        "METEOR": meteor_corpus([gts[i] for i in gts], [res[i][0] for i in res]),
        "ROUGE_L": float(Rouge().compute_score(gts, res)[0]),
        "CIDEr": float(Cider().compute_score(gts, res)[0]),
    }
