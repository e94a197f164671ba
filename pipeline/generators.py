"""Synthetic preference data with a known latent structure (the paper's controlled settings).

Each generator returns raw rows for :func:`pipeline.pairs.finalize`: dicts with
``prompt, chosen, rejected, split`` and the metadata the setting is about.

* :func:`categories` -- SHP-like (paper §5.1). Prompts come from 4 latent categories
  (12 sub-domains). Most preference signal is a shared ranking of 4 response styles;
  askers who follow their category's norm put its favourite style first, so routing on
  the category helps, but (as on SHP) only on the pairs where the rankings differ.
* :func:`attributes` -- RPR-like (paper §5.2, App. A). Two responses in two attribute
  styles; each example becomes two rows whose labels flip with the attribute. The
  criterion is appended to the prompt in train/validation, not in test.
* :func:`users` -- PersonalLLM-like (paper §6.2, App. H). Candidate responses carry a
  latent quality vector over a few "scorers"; users are Dirichlet weight vectors over
  the scorers; a pair is the best vs the worst response under one user's weights.

Design choices shared by all three:

* Texts are short (prompts ~12-30 words, responses ~10-30 words) because a small LLM
  featurizes every (prompt, response) sequence on a CPU.
* Every response style is marked by its own vocabulary throughout the text *and* in its
  final sentence: the downstream model reads only the last-token state of a response.
  :func:`style_of` recovers a style from text alone, which is how the tests check it.
* Everything is a pure function of the seed: ``random.Random`` / ``numpy`` generators
  seeded per purpose ("stream"), never the global RNG, never iteration over a set.
  Separate streams keep e.g. ``label_noise`` from changing any text.
* Prompts never repeat within a dataset: a draw that collides is redrawn, and a grammar
  that is exhausted raises instead of looping or silently repeating.
"""

from __future__ import annotations

import inspect
import itertools
import random
import re
from collections.abc import Callable

import numpy as np

SPLITS = ("train", "validation", "test")
MAX_TRIES = 2000  # redraws per prompt before the grammar counts as exhausted

# ---------------------------------------------------------------------------------------
# Response styles. One table serves all three generators: `categories` uses 4 of them as
# its competing qualities, `attributes` maps each attribute to one, `users` maps each
# scorer to one. Each style: `bodies` (one sentence about {topic}) and `closers` (the
# final sentence, marked on its own). Words used by exactly one style become that
# style's markers (see `style_of`), so the vocabularies are kept disjoint on purpose.
# Templates never start a clause with "{topic} is": topics may be singular or plural.
# ---------------------------------------------------------------------------------------

STYLES: dict[str, dict[str, list[str]]] = {
    "evidence": {
        "bodies": [
            "Controlled studies of {topic} point to one mechanism, and the measured data are consistent.",
            "The peer-reviewed evidence on {topic} is clear: experiments and datasets show a measurable effect.",
            "Research on {topic} has quantified this, and published studies agree on the causal mechanism.",
            "Experimental data on {topic} show a replicated, statistically significant effect across studies.",
            "Meta-analyses of {topic} converge: the measured evidence supports a well-documented mechanism.",
        ],
        "closers": [
            "That conclusion rests on replicated studies and measured data.",
            "The published evidence and experimental data back this up.",
            "See the cited studies: the data are statistically consistent.",
            "This is what the peer-reviewed research and measurements show.",
        ],
    },
    "caution": {
        "bodies": [
            "Be careful with {topic}: the risks depend on your situation, so treat this as a general caveat.",
            "I would be cautious about {topic}, because rules and risks differ case by case.",
            "With {topic}, a mistake can be costly or unsafe, so please don't rely on general advice alone.",
            "There are real risks and legal or health caveats around {topic} that I cannot assess from here.",
        ],
        "closers": [
            "Please consult a licensed professional before acting.",
            "Check with a qualified, licensed professional who can review your case.",
            "To stay safe, get advice from a licensed expert beforehand.",
            "When in doubt, consult a licensed professional.",
        ],
    },
    "steps": {
        "bodies": [
            "First, break {topic} into small parts and gather materials. Then work through one part at a time.",
            "First, sketch a rough outline for {topic}. Then tweak one variable at a time and check the result.",
            "Step one for {topic}: prepare your materials. Step two: follow the standard method exactly once.",
            "First, write down your goal for {topic}. Then practice the core steps in order.",
        ],
        "closers": [
            "Finally, review each step and repeat it next time.",
            "Finally, note what worked and repeat the process.",
            "Finally, check the result and adjust the next step.",
            "Finally, repeat the steps until they feel routine.",
        ],
    },
    "playful": {
        "bodies": [
            "Oh wow, {topic}! Such a fun one, imagine it as a wild adventure full of surprises!",
            "I absolutely love {topic}! Picture a magical quest where anything can happen!",
            "Yay, {topic}! Just imagine the possibilities, what pure delight!",
            "Ooh, {topic}, how exciting! Imagine diving into a sparkling world of wonders!",
        ],
        "closers": [
            "Wow, how awesome is that!",
            "Have fun imagining it, what a blast!",
            "Honestly, so much fun, what a thrill!",
            "Isn't that amazing? Wow!",
        ],
    },
    "humor": {
        "bodies": [
            "Explaining {topic} is like herding cats on roller skates, but I'll try, jokes included.",
            "Here is the punchline about {topic}: even the experts laugh at how silly it gets.",
            "Ah, {topic}, the comedy classic: equal parts slapstick and sitcom, with a joke in every corner.",
            "Talking about {topic} always gets a laugh, because honestly the whole thing is a hilarious sitcom.",
        ],
        "closers": [
            "Ba-dum-tss, I'll be here all week, folks.",
            "That's the joke, and yes, you may laugh now.",
            "Laugh now, thank me later, haha.",
            "No pun intended, well, maybe a little pun.",
        ],
    },
    "concise": {
        "bodies": [
            "{topic}: keep it short and simple.",
            "Short answer on {topic}: simple basics only.",
            "In brief, {topic} boils down to one simple idea.",
            "Bottom line on {topic}: short and simple wins.",
        ],
        "closers": [
            "That's it, short and simple.",
            "Nothing more needed, in a nutshell.",
            "Brief and done, simple.",
            "In short: keep it simple.",
        ],
    },
    "detail": {
        "bodies": [
            "In detail, {topic} involves several components, each with specific considerations, exceptions, and trade-offs.",
            "To elaborate fully on {topic}: there are background factors, specific sub-cases, and numerous nuances.",
            "A thorough explanation of {topic} covers the context, the components, and the edge cases in depth.",
        ],
        "closers": [
            "Each detail deserves further elaboration, and I can expand on any of them.",
            "Taken together, these specifics give a comprehensive, in-depth account.",
            "In summary, all of these detailed, interconnected considerations matter thoroughly.",
        ],
    },
    "empathy": {
        "bodies": [
            "I hear you, and it's completely understandable to feel overwhelmed by {topic}.",
            "That sounds really stressful, and your feelings about {topic} are valid.",
            "I'm sorry you're dealing with this; {topic} can feel lonely and hard.",
            "It's okay to feel unsure about {topic}; many people feel exactly the same way.",
        ],
        "closers": [
            "Be gentle with yourself, you are not alone in this.",
            "Whatever you decide, your feelings matter and I'm here for you.",
            "Take a breath; you are doing better than you think.",
            "Sending you warmth and support, you are not alone.",
        ],
    },
    "formal": {
        "bodies": [
            "With respect to {topic}, one must observe that the matter warrants formal consideration.",
            "Regarding {topic}, it is hereby noted that the following considerations are pertinent.",
            "Pursuant to your inquiry concerning {topic}, kindly find the relevant observations herein.",
            "Concerning {topic}, the undersigned respectfully submits the following assessment.",
        ],
        "closers": [
            "I remain at your disposal for further inquiries. Yours faithfully.",
            "Kindly accept this assessment with my respectful regards.",
            "Should further clarification be required, please do not hesitate to inquire.",
            "Respectfully submitted for your consideration.",
        ],
    },
    "creative": {
        "bodies": [
            "Think of {topic} as a poem written in moonlight, each line a lantern on a winding river.",
            "Let me paint {topic} as a tapestry of metaphors: seeds of invention, vines of the unexpected.",
            "In my telling, {topic} becomes a myth about a lantern-bearer who invents new constellations.",
            "If {topic} were a song, it would be an original melody woven from silver threads and rhymes.",
        ],
        "closers": [
            "And so the tale ends in verse, like a lantern fading into dawn.",
            "That is my original metaphor, painted in moonlight and rhyme.",
            "A little poem, a little myth, a new way of seeing.",
        ],
    },
    "examples": {
        "bodies": [
            "For example, a neighbor who tried {topic} one weekend saw real, concrete results.",
            "Here is a concrete example of {topic}: a small shop owner who applied it every Monday.",
            "Take {topic}: for instance, a teacher I know tested it in one real classroom.",
            "A practical example of {topic}: for instance, try it once this week on a real task.",
        ],
        "closers": [
            "For instance, try this example in real life tomorrow.",
            "That real-world example shows how it works in practice.",
            "Concrete cases like this make it practical.",
            "Such examples, for instance, are easy to apply in practice.",
        ],
    },
    "history": {
        "bodies": [
            "Historically, {topic} has roots going back centuries, shaped by earlier generations and traditions.",
            "In the nineteenth century, early pioneers of {topic} laid foundations that still matter.",
            "The story of {topic} stretches back to ancient times, evolving through many eras.",
            "Looking back over past decades, {topic} evolved a great deal since its origins.",
        ],
        "closers": [
            "That historical background, across centuries, explains where we are today.",
            "History, over many generations, shaped it.",
            "Its past and origins, from ancient eras onward, still echo today.",
        ],
    },
    "teaching": {
        "bodies": [
            "Let's learn {topic} together: I'll explain the key concept, then you try a practice question.",
            "Mini lesson on {topic}: the concept, a worked exercise, then a check for understanding.",
            "To teach {topic} well, start from what you already know, then build the new concept on top.",
        ],
        "closers": [
            "Quick quiz: can you explain it back in your own words?",
            "Now try the exercise to check your understanding.",
            "Lesson recap: concept, practice, then a self-check quiz.",
        ],
    },
    "budget": {
        "bodies": [
            "On a tight budget, {topic} stays affordable if you compare costs and skip expensive extras.",
            "Cost-wise, {topic} pays off: the upfront price is low and the savings add up.",
            "Financially, {topic} is feasible: budget a few dollars a week and track every expense.",
        ],
        "closers": [
            "Aim for a low cost and a strong return on investment.",
            "Cheap, affordable, and worth every dollar.",
            "Stay within budget and watch the savings grow.",
        ],
    },
}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


# Generic words (and 1-2 letter words) are never markers: they also occur in topics and subjects.
GENERIC_WORDS = frozenset(
    "about already always any anything around before but comes does done even from full gets give have into "
    "just make more much need next only over same see set should show since still than them these they thing "
    "time times two were when whole with work works its it's i'm get let may yes own off few".split()
)


def _style_markers() -> dict[str, frozenset[str]]:
    """Words that occur in exactly one style's templates: that style's lexical markers."""
    vocab = {
        name: {w for w in _words(" ".join(s["bodies"] + s["closers"]).replace("{topic}", ""))
               if len(w) >= 3 and w not in GENERIC_WORDS}
        for name, s in STYLES.items()
    }
    owners: dict[str, int] = {}
    for name in STYLES:  # dict order, so deterministic
        for w in sorted(vocab[name]):
            owners[w] = owners.get(w, 0) + 1
    return {name: frozenset(w for w in sorted(vocab[name]) if owners[w] == 1) for name in STYLES}


STYLE_MARKERS = _style_markers()


def style_of(text: str, candidates: list[str] | tuple[str, ...] | None = None) -> str | None:
    """The style whose marker words occur most often in `text` (None if none occur).

    Exposed so that tests and analyses can check preference structure from text alone;
    `candidates` restricts the answer to some styles (e.g. the 4 of `categories`)."""
    names = list(candidates) if candidates is not None else list(STYLES)
    words = _words(text)
    counts = [sum(w in STYLE_MARKERS[n] for w in words) for n in names]
    best = max(range(len(names)), key=lambda i: counts[i])  # first wins a tie
    return names[best] if counts[best] > 0 else None


def _sentence(template: str, topic: str) -> str:
    text = template.format(topic=topic)
    return text[0].upper() + text[1:]


def _respond(rng: random.Random, style: str, topic: str, closer_style: str | None = None) -> str:
    """A body sentence in `style` about `topic`, then a final sentence in `closer_style`
    (default: the same style, so the end of the response carries the style too)."""
    body = rng.choice(STYLES[style]["bodies"])
    closer = rng.choice(STYLES[closer_style or style]["closers"])
    return _sentence(body, topic) + " " + _sentence(closer, topic)


# ---------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------


def _rng(seed: int, stream: str) -> random.Random:
    """A generator per purpose. Seeding with a string is deterministic (sha512-based,
    independent of PYTHONHASHSEED), and separate streams keep purposes independent."""
    return random.Random(f"{stream}:{seed}")


def _np_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([stream, seed])


def _unique(draw: Callable[[], tuple], seen: set[str], what: str) -> tuple:
    """Call `draw` (returning a tuple whose first item is the text) until the text is new."""
    for _ in range(MAX_TRIES):
        item = draw()
        if item[0] not in seen:
            seen.add(item[0])
            return item
    raise ValueError(
        f"could not draw a new {what} after {MAX_TRIES} tries: the grammar is exhausted; "
        f"ask for fewer examples"
    )


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


# ---------------------------------------------------------------------------------------
# categories: SHP-like (paper §5.1, App. A Table 7)
# ---------------------------------------------------------------------------------------

# category -> domain -> subjects. Domain names follow SHP's subreddits where the paper
# has them; the subject makes the domain (and so the category) obvious from the prompt.
DOMAINS: dict[str, dict[str, list[str]]] = {
    "Academic": {
        "askphysics": [
            "black holes", "quantum entanglement", "superconductors", "dark matter", "the speed of light",
            "neutron stars", "gravitational waves", "nuclear fusion", "the Higgs boson", "time dilation",
        ],
        "askhistorians": [
            "the fall of Rome", "the Black Death", "the Silk Road", "medieval castles", "the French Revolution",
            "the Egyptian pyramids", "the Ottoman Empire", "Viking longships", "the printing press",
            "the Meiji Restoration",
        ],
        "askphilosophy": [
            "free will", "moral realism", "the trolley problem", "personal identity", "Kant's categorical imperative",
            "the mind-body problem", "utilitarianism", "Plato's theory of forms", "existentialism",
            "the problem of induction",
        ],
    },
    "Professional": {
        "legaladvice": [
            "my apartment lease", "a security deposit dispute", "a non-compete agreement", "a small claims lawsuit",
            "my landlord's eviction notice", "an unpaid final paycheck", "a car accident insurance claim",
            "a neighbor's fence on my property", "a parking ticket appeal", "my grandmother's will",
        ],
        "askdocs": [
            "a persistent dry cough", "recurring migraines", "a swollen ankle", "chest tightness after running",
            "high blood pressure readings", "a rash that won't go away", "numbness in my fingers",
            "ongoing lower back pain", "a mole that changed shape", "constant fatigue",
        ],
        "askhr": [
            "a toxic manager", "a salary negotiation", "a performance improvement plan",
            "a coworker taking credit for my work", "a request for remote work", "an unfair performance review",
            "a harassment complaint", "my parental leave", "a layoff rumor", "an offer letter with unclear terms",
        ],
    },
    "Cooking": {
        "askbaking": [
            "sourdough bread", "banana bread", "croissants", "pie crust", "cinnamon rolls", "brioche",
            "macarons", "chocolate chip cookies", "focaccia", "cheesecake",
        ],
        "askculinary": [
            "risotto", "homemade pasta", "pan-seared salmon", "beef stew", "stir-fried vegetables",
            "hollandaise sauce", "french omelettes", "chicken stock", "caramelized onions", "fried rice",
        ],
        "grilling": [
            "pork ribs", "beef brisket", "grilled chicken thighs", "smash burgers", "cedar plank salmon",
            "grilled corn", "pulled pork shoulder", "ribeye steaks", "lamb kebabs", "smoked sausages",
        ],
    },
    "Fiction": {
        "asksciencefiction": [
            "the Star Wars hyperdrive", "the Borg in Star Trek", "the spice in Dune", "Asimov's three laws of robotics",
            "the Matrix simulation", "the TARDIS in Doctor Who", "the Foundation series", "warp drives",
            "the Belters in The Expanse", "time travel in Interstellar",
        ],
        "fantasy": [
            "the One Ring", "dragons in Game of Thrones", "the magic system in Mistborn", "the Hogwarts sorting hat",
            "the elves of Middle-earth", "the Wheel of Time", "Narnia's White Witch", "the Witcher's mutations",
            "the Dark Tower", "the wizards of Earthsea",
        ],
        "comicbooks": [
            "Batman's rogues gallery", "Spider-Man's spider sense", "the X-Men", "Superman's weaknesses",
            "the Joker's origin", "the Infinity Gauntlet", "Wonder Woman's lasso", "Deadpool breaking the fourth wall",
            "the Watchmen ending", "the Hulk's strength",
        ],
    },
}

# Per-category question frames ({subject}) and lead-in sentences: prompt = context + frame.
CATEGORY_FRAMES: dict[str, list[str]] = {
    "Academic": [
        "What is the current expert understanding of {subject}, and why is it still debated?",
        "Why is {subject} so hard to explain in simple terms?",
        "How do scholars actually know what they claim about {subject}?",
        "What is the biggest misconception people have about {subject}?",
        "Is there a good explanation of {subject} that a non-specialist can follow?",
        "Which question about {subject} is still unresolved among experts?",
        "How did scholars arrive at their current view on {subject}?",
        "Why do textbooks disagree so much about {subject}?",
    ],
    "Professional": [
        "I'm dealing with {subject} right now. What are my options?",
        "What should I do about {subject}?",
        "How worried should I be about {subject}?",
        "Has anyone handled {subject} before, and how did it go?",
        "How do I handle {subject} without making it worse?",
        "What is the first thing I should do about {subject}?",
        "I need advice on {subject} before it escalates. Where do I start?",
        "Is it normal to struggle this much with {subject}, and what comes next?",
    ],
    "Cooking": [
        "Every time I make {subject}, it comes out wrong. What am I doing wrong?",
        "How do I get {subject} right on the first try?",
        "What is the secret to really good {subject}?",
        "My last attempt at {subject} was a disaster. How do I fix it?",
        "Any tips for making {subject} at home without special equipment?",
        "What temperature and timing should I use for {subject}?",
        "Why does homemade {subject} never taste like the restaurant version?",
        "What is the most common mistake people make with {subject}?",
    ],
    "Fiction": [
        "What is the real explanation behind {subject}?",
        "Is there an in-universe reason for {subject}, or is it just a plot device?",
        "Why do fans argue so much about {subject}?",
        "What is your favorite theory about {subject}?",
        "Does {subject} actually make sense when you think about it?",
        "How would {subject} work if it were real?",
        "What is the most underrated detail about {subject}?",
        "Which writer handled {subject} best, in your opinion?",
    ],
}

CATEGORY_CONTEXTS: dict[str, list[str]] = {
    "Academic": [
        "I'm an undergraduate and this came up in a seminar.",
        "My professor mentioned this in a lecture last week.",
        "I've been reading about this for a term paper.",
        "Long-time lurker, first question here.",
        "I'm a high school teacher preparing a lesson.",
        "This came up in an argument with my study group.",
        "I just finished a popular book on the subject.",
        "I keep going back and forth on this.",
    ],
    "Professional": [
        "Throwaway account for obvious reasons.",
        "Located in Ohio, if that matters.",
        "I'm 34 and have never dealt with this before.",
        "This has been stressing me out for weeks.",
        "Posting for a friend who is too anxious to ask.",
        "Quick background: I work full time and have little spare time.",
        "Not sure if this is the right place to ask.",
        "Update from my earlier post, things got worse.",
    ],
    "Cooking": [
        "Home cook here, fairly new to this.",
        "Cooking for a family dinner this weekend.",
        "I've tried three times already this month.",
        "My oven runs a little hot, for what it's worth.",
        "Trying to impress my in-laws on Sunday.",
        "I followed a popular online recipe exactly.",
        "Cooking on a tight schedule after work.",
        "Long-time cook, first time trying this.",
    ],
    "Fiction": [
        "Rewatching everything this summer and got curious.",
        "Big fan, long-time reader.",
        "My friends and I argued about this all night.",
        "Just finished the series for the first time.",
        "Spoilers ahead, probably.",
        "This has bugged me since I was a kid.",
        "Random late-night question.",
        "Writing some fan fiction and need help.",
    ],
}

# The competing response qualities. Like SHP, most of the preference signal is shared:
# an asker who does not follow their category's norm ranks the styles by
# GLOBAL_STYLE_RANKING; one who does ranks them by CATEGORY_NORMS[category].
CATEGORY_STYLES = ("evidence", "caution", "steps", "playful")
GLOBAL_STYLE_RANKING = ("steps", "evidence", "caution", "playful")
# Each norm puts the category's favourite style first and disagrees with the global
# ranking on exactly 3 of the 6 style pairs, each category on a different 3. Why explicit
# and equidistant: "move the favourite to the top" leaves the category whose favourite
# already leads the global ranking (Cooking, "steps") with no deviation at all, so no
# preference signal separates it, and the distance to the global ranking (0-3 pairs)
# would decide which categories a router can discover rather than the categories
# themselves.
CATEGORY_NORMS = {
    "Academic": ("evidence", "caution", "playful", "steps"),
    "Professional": ("caution", "evidence", "steps", "playful"),
    "Cooking": ("steps", "playful", "caution", "evidence"),
    "Fiction": ("playful", "steps", "evidence", "caution"),
}
PREFERRED_STYLE = {category: norm[0] for category, norm in CATEGORY_NORMS.items()}
# SHP's test-set composition (paper App. A, Table 7). The embedded data keeps its
# imbalance: with K = 5 experts and a balanced-load term (Eq. 5), the big category has to
# share experts (two Academic experts in the paper's Table 2) while the small ones keep one.
SHP_CATEGORY_COUNTS = {"Academic": 617, "Professional": 384, "Cooking": 256, "Fiction": 240}


def category_ranking(category: str | None) -> tuple[str, ...]:
    """Styles best-first: ``category``'s norm, or the global ranking for ``None`` (an
    asker who does not follow their category's norm)."""
    return GLOBAL_STYLE_RANKING if category is None else CATEGORY_NORMS[category]


def apportion(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``n`` items across keys in proportion to ``weights`` (largest remainder, ties
    broken by key order), so that the counts sum to ``n`` exactly."""
    total = sum(weights.values())
    quotas = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(q) for k, q in quotas.items()}
    by_remainder = sorted(weights, key=lambda k: -(quotas[k] - counts[k]))
    for k in by_remainder[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _check_category_weights(weights: dict[str, float]) -> None:
    if set(weights) != set(DOMAINS):
        raise ValueError(f"category_weights must name exactly the categories {sorted(DOMAINS)}, "
                         f"got {sorted(weights)}")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in weights.values()) \
            or sum(weights.values()) <= 0:
        raise ValueError(f"category_weights must be non-negative numbers with a positive sum, got {weights!r}")


def categories(
    seed: int = 0,
    n_train_prompts: int = 400,
    n_validation_prompts: int = 200,
    n_test_prompts: int = 320,
    category_strength: float = 0.6,
    label_noise: float = 0.2,
    category_weights: dict[str, float] | None = None,
) -> list[dict]:
    """SHP-like data: a shared preference ranking plus a category-specific deviation.

    Each prompt gets one response per style (all about the prompt's subject). With
    probability ``category_strength`` the asker follows their category's norm (its
    favourite style first, 3 of the 6 style pairs reversed; see :data:`CATEGORY_NORMS`),
    otherwise the global ranking.
    Train: all 6 style pairs of each prompt (SHP's heavy response reuse; the backbone still
    runs once per response). Validation/test: one random style pair per prompt (as the
    paper evaluates SHP). Each split's prompts are apportioned across categories by
    ``category_weights`` (default: SHP's composition, :data:`SHP_CATEGORY_COUNTS`; equal
    weights give balanced splits). ``label_noise`` swaps
    chosen/rejected per pair in every split (real SHP labels disagree often). The strength
    and noise draws use their own RNG streams, so the texts do not depend on them.

    Why not make preferences fully category-specific: then routing on the category is
    worth so much that even an unregularized MoE learns it, and the data no longer
    separates the paper's regularized router from the baselines (§5.1, Table 1).
    """
    for name, n in [("n_train_prompts", n_train_prompts), ("n_validation_prompts", n_validation_prompts),
                    ("n_test_prompts", n_test_prompts)]:
        _check_count(name, n)
    _check_fraction("category_strength", category_strength)
    _check_fraction("label_noise", label_noise)
    weights = SHP_CATEGORY_COUNTS if category_weights is None else category_weights
    _check_category_weights(weights)
    rng, noise_rng = _rng(seed, "categories"), _rng(seed, "categories-noise")
    strength_rng = _rng(seed, "categories-strength")
    names = list(DOMAINS)
    style_pairs = list(itertools.combinations(CATEGORY_STYLES, 2))
    seen: set[str] = set()
    rows: list[dict] = []

    def draw_prompt(category: str) -> tuple[str, str, str]:
        domain = rng.choice(list(DOMAINS[category]))
        subject = rng.choice(DOMAINS[category][domain])
        frame = rng.choice(CATEGORY_FRAMES[category]).format(subject=subject)
        return rng.choice(CATEGORY_CONTEXTS[category]) + " " + frame, domain, subject

    for split, n in zip(SPLITS, (n_train_prompts, n_validation_prompts, n_test_prompts)):
        cats = [c for c, count in apportion(n, {c: weights[c] for c in names}).items() for _ in range(count)]
        rng.shuffle(cats)
        for category in cats:
            prompt, domain, subject = _unique(lambda: draw_prompt(category), seen, f"{category} prompt")
            responses = {style: _respond(rng, style, subject) for style in CATEGORY_STYLES}
            follows = strength_rng.random() < category_strength
            rank = {s: i for i, s in enumerate(category_ranking(category if follows else None))}
            for a, b in (style_pairs if split == "train" else [rng.choice(style_pairs)]):
                chosen, rejected = (a, b) if rank[a] < rank[b] else (b, a)
                if noise_rng.random() < label_noise:
                    chosen, rejected = rejected, chosen
                rows.append({"prompt": prompt, "chosen": responses[chosen], "rejected": responses[rejected],
                             "split": split, "category": category, "domain": domain})
    return rows


# ---------------------------------------------------------------------------------------
# Assistant-request prompts, shared by `attributes` and `users`
# ---------------------------------------------------------------------------------------

REQUEST_FRAMES = [
    "Can you explain {topic} to {audience}?",
    "I need a quick overview of {topic} for {audience}. What should I know?",
    "What is the most important thing about {topic} for {audience}?",
    "Write a short answer about {topic} that would help {audience}.",
    "How would you describe {topic} to {audience}?",
    "Give me some advice on {topic}; it is for {audience}.",
    "What are common mistakes with {topic}, especially for {audience}?",
    "Help me understand {topic}; I am asking on behalf of {audience}.",
    "Could you summarize {topic} in a way that works for {audience}?",
    "What should {audience} know before getting into {topic}?",
]
AUDIENCES = [
    "a curious teenager", "my retired neighbor", "a first-year college student", "a busy small-business owner",
    "a new employee on my team", "my book club", "a group of ten-year-olds", "a nervous beginner",
    "my skeptical uncle", "our community newsletter", "a hospital volunteer group", "a community garden club",
]
TOPICS = [
    "saving for retirement", "composting at home", "learning a second language", "training a new puppy",
    "public speaking", "electric cars", "sleep hygiene", "planning a vegetable garden", "writing a cover letter",
    "basic home repairs", "the water cycle", "starting a podcast", "training for a marathon",
    "backpacking through Europe", "password security", "houseplant care", "meal prepping for the week",
    "negotiating a salary", "reading nutrition labels", "volcanoes", "how vaccines work", "climate change",
    "the stock market", "remote work", "beginner photography", "learning to code", "moving to a new city",
    "recycling plastics", "birdwatching", "chess openings", "time management", "renewable energy",
    "treating minor burns", "buying a used car", "keeping bees", "baking bread", "jazz music",
    "solar eclipses", "mindfulness meditation", "home internet setup",
]


def _draw_request(rng: random.Random) -> tuple[str, str]:
    topic = rng.choice(TOPICS)
    prompt = rng.choice(REQUEST_FRAMES).format(topic=topic, audience=rng.choice(AUDIENCES))
    return prompt[0].upper() + prompt[1:], topic


# ---------------------------------------------------------------------------------------
# attributes: RPR-like (paper §5.2, App. A "RPR")
# ---------------------------------------------------------------------------------------

# (name, response style, criterion predicates). A criterion is a lead + a predicate, so
# each attribute has several paraphrases, some mentioning the prompt's topic (as RPR's
# context-dependent criteria do). Names follow the paper's attribute list where it has one.
ATTRIBUTES: list[tuple[str, str, list[str]]] = [
    ("Humor and Entertainment Value", "humor", [
        "be funny and light-hearted.",
        "use humor or a joke to make the point about {topic}.",
        "make the reader laugh while explaining {topic}.",
    ]),
    ("Clarity and Conciseness", "concise", [
        "be as short and to the point as possible.",
        "give a brief, one-line answer about {topic}.",
        "avoid every unnecessary word.",
    ]),
    ("Detail and Elaboration", "detail", [
        "give a thorough, detailed explanation of {topic}.",
        "elaborate on the specifics and nuances.",
        "cover {topic} in depth, leaving nothing out.",
    ]),
    ("Empathy and Emotional Intelligence", "empathy", [
        "acknowledge the reader's feelings with warmth.",
        "be compassionate and emotionally supportive about {topic}.",
        "show understanding of how stressful {topic} can feel.",
    ]),
    ("Scientific Rigor", "evidence", [
        "cite evidence, data, or studies about {topic}.",
        "be grounded in research and measurable facts.",
        "explain the mechanism behind {topic} rigorously.",
    ]),
    ("Creativity and Originality", "creative", [
        "use an original metaphor or poetic image for {topic}.",
        "be imaginative and artistic rather than literal.",
        "describe {topic} in an inventive, poetic way.",
    ]),
    ("Formality", "formal", [
        "use a formal, polite, and official register.",
        "address {topic} in the tone of a formal letter.",
        "avoid casual language entirely.",
    ]),
    ("Practical Application", "examples", [
        "include a concrete, real-world example of {topic}.",
        "illustrate the advice with practical cases.",
        "show how {topic} applies in everyday practice.",
    ]),
    ("Step-by-step Structure", "steps", [
        "lay out {topic} as ordered steps.",
        "give a clear sequence of actions to follow.",
        "structure the answer as first, then, finally.",
    ]),
    ("Safety Awareness", "caution", [
        "point out the risks of {topic} and recommend expert help.",
        "include caveats and advise consulting a professional.",
        "put safety first when discussing {topic}.",
    ]),
    ("Enthusiasm", "playful", [
        "sound excited and enthusiastic about {topic}.",
        "be upbeat, energetic, and full of exclamation.",
        "convey genuine excitement.",
    ]),
    ("Historical Context", "history", [
        "explain how {topic} developed over time.",
        "give the historical background and origins.",
        "put {topic} in its historical context.",
    ]),
    ("Pedagogical Effectiveness", "teaching", [
        "teach {topic} like a good lesson, with a practice question.",
        "help the reader learn and check their understanding.",
        "be structured like a tutorial for a student.",
    ]),
    ("Economic Feasibility", "budget", [
        "focus on the costs and savings of {topic}.",
        "keep the advice cheap and affordable.",
        "consider the budget and return on investment.",
    ]),
]
ATTRIBUTE_STYLE = {name: style for name, style, _ in ATTRIBUTES}
CRITERION_LEADS = ["The response should", "A good answer should", "The ideal reply should", "I'd like the answer to"]


def _criterion(rng: random.Random, attribute: str, topic: str) -> str:
    predicates = next(p for name, _, p in ATTRIBUTES if name == attribute)
    return rng.choice(CRITERION_LEADS) + " " + rng.choice(predicates).format(topic=topic)


def _balanced_pairs(rng: random.Random, names: list[str], n: int) -> list[tuple[str, str]]:
    """n ordered attribute pairs, cycling through reshuffled copies of all ordered pairs,
    so every attribute appears about equally often as x and as y."""
    pool = [(a, b) for a in names for b in names if a != b]
    out: list[tuple[str, str]] = []
    while len(out) < n:
        cycle = list(pool)
        rng.shuffle(cycle)
        out.extend(cycle)
    return out[:n]


def attributes(
    seed: int = 0,
    n_train_examples: int = 300,
    n_validation_examples: int = 100,
    n_test_examples: int = 480,
    n_attributes: int = 12,
) -> list[dict]:
    """RPR-like data: the same two responses, with the preference reversed by the criterion.

    Each example has a request, two distinct attributes x, y, response_a in x's style
    and response_b in y's style. It becomes two rows: under x's criterion a beats b,
    under y's criterion b beats a. As in the paper, the criterion is appended to the
    prompt for training (and kept in validation, so experts can be matched to
    attributes); the test prompt is the bare request, with `attribute`/`criterion` still
    filled so that test-time adaptation can select rows per attribute. The attributes
    used are the first `n_attributes` of ATTRIBUTES (a stable set across seeds).
    """
    for name, n in [("n_train_examples", n_train_examples), ("n_validation_examples", n_validation_examples),
                    ("n_test_examples", n_test_examples)]:
        _check_count(name, n)
    if not 2 <= n_attributes <= len(ATTRIBUTES):
        raise ValueError(f"n_attributes must be in [2, {len(ATTRIBUTES)}], got {n_attributes!r}")
    rng = _rng(seed, "attributes")
    names = [name for name, _, _ in ATTRIBUTES[:n_attributes]]
    seen: set[str] = set()
    rows: list[dict] = []
    for split, n in zip(SPLITS, (n_train_examples, n_validation_examples, n_test_examples)):
        for x, y in _balanced_pairs(rng, names, n):
            prompt, topic = _unique(lambda: _draw_request(rng), seen, "request prompt")
            response_a = _respond(rng, ATTRIBUTE_STYLE[x], topic)
            response_b = _respond(rng, ATTRIBUTE_STYLE[y], topic)
            for attribute, chosen, rejected in [(x, response_a, response_b), (y, response_b, response_a)]:
                criterion = _criterion(rng, attribute, topic)
                text = prompt if split == "test" else prompt + "\n\n" + criterion
                rows.append({"prompt": text, "chosen": chosen, "rejected": rejected, "split": split,
                             "attribute": attribute, "criterion": criterion})
    return rows


# ---------------------------------------------------------------------------------------
# users: PersonalLLM-like (paper §6.2, App. H)
# ---------------------------------------------------------------------------------------

# scorer -> the response style that realises a high value of it.
SCORERS: dict[str, str] = {
    "detail": "detail",
    "brevity": "concise",
    "humor": "humor",
    "formality": "formal",
    "empathy": "empathy",
    "caution": "caution",
    "enthusiasm": "playful",
    "examples": "examples",
}
INCOMPATIBLE = [("detail", "brevity")]  # a response cannot be dominated by both
SCORE_NOISE = 0.05


def _dominant_sets(scorers: list[str]) -> list[tuple[int, ...]]:
    """All 1- and 2-scorer combinations a response can be dominated by."""
    singles = [(i,) for i in range(len(scorers))]
    doubles = [(i, j) for i in range(len(scorers)) for j in range(i + 1, len(scorers))
               if (scorers[i], scorers[j]) not in INCOMPATIBLE and (scorers[j], scorers[i]) not in INCOMPATIBLE]
    return singles + doubles


def _users_world(
    seed: int, n_prompts: int, n_responses: int, n_scorers: int, n_users: int, dirichlet_alpha: float
) -> dict:
    """The latent world behind `users`: prompts, candidate responses, scorer scores and
    user weights. Separate from pair construction so tests can check pairs against it.

    A response is dominated by 1-2 scorers (drawn without replacement per prompt, so the
    candidates of a prompt differ): latent 0.7-1.0 for the primary, 0.45-0.65 for a
    secondary, 0-0.25 elsewhere. Its text is the primary's body sentence and the
    secondary's (else the primary's) closer. Scores add small Gaussian noise."""
    scorers = list(SCORERS)[:n_scorers]
    sets = _dominant_sets(scorers)
    if n_responses > len(sets):
        raise ValueError(f"n_responses must be <= {len(sets)} for {n_scorers} scorers, got {n_responses}")
    text_rng = _rng(seed, "users-text")
    latent_rng, weight_rng = _np_rng(seed, 1), _np_rng(seed, 2)
    weights = weight_rng.dirichlet(np.full(n_scorers, dirichlet_alpha), size=n_users)
    latent = latent_rng.uniform(0.0, 0.25, size=(n_prompts, n_responses, n_scorers))
    seen: set[str] = set()
    prompts, responses = [], []
    for p in range(n_prompts):
        prompt, topic = _unique(lambda: _draw_request(text_rng), seen, "request prompt")
        texts = []
        for r, k in enumerate(latent_rng.choice(len(sets), size=n_responses, replace=False)):
            dominant = list(sets[k])
            latent_rng.shuffle(dominant)  # primary first
            latent[p, r, dominant[0]] = latent_rng.uniform(0.7, 1.0)
            if len(dominant) == 2:
                latent[p, r, dominant[1]] = latent_rng.uniform(0.45, 0.65)
            styles = [SCORERS[scorers[i]] for i in dominant]
            texts.append(_respond(text_rng, styles[0], topic, closer_style=styles[-1]))
        if len(set(texts)) != len(texts):  # cannot happen with distinct dominant sets
            raise AssertionError(f"duplicate candidate responses for prompt {p}")
        prompts.append(prompt)
        responses.append(texts)
    scores = latent + latent_rng.normal(0.0, SCORE_NOISE, size=latent.shape)
    return {"scorers": scorers, "prompts": prompts, "responses": responses, "scores": scores, "weights": weights}


def users(
    seed: int = 0,
    n_prompts: int = 200,
    n_responses: int = 8,
    n_scorers: int = 6,
    n_users: int = 10,
    users_per_prompt: int = 5,
    dirichlet_alpha: float = 0.3,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.25,
) -> list[dict]:
    """PersonalLLM-like data: one pair per (prompt, user), best vs worst under the user's weights.

    Users are Dirichlet(`dirichlet_alpha`) weight vectors over the scorers (small alpha:
    each user cares about one or two qualities). Prompts are split train/validation/
    test; each prompt is judged by `users_per_prompt` distinct users, so several users
    share a prompt and often the same responses (shared sequences are featurized once).
    """
    _check_count("n_prompts", n_prompts)
    _check_count("n_responses", n_responses, 2)
    _check_count("n_users", n_users, 1)
    _check_count("users_per_prompt", users_per_prompt, 1)
    if not 5 <= n_scorers <= len(SCORERS):
        raise ValueError(f"n_scorers must be in [5, {len(SCORERS)}], got {n_scorers!r}")
    if users_per_prompt > n_users:
        raise ValueError(f"users_per_prompt ({users_per_prompt}) must be <= n_users ({n_users})")
    if dirichlet_alpha <= 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha!r}")
    _check_fraction("validation_fraction", validation_fraction)
    _check_fraction("test_fraction", test_fraction)
    if validation_fraction + test_fraction > 1:
        raise ValueError("validation_fraction + test_fraction must be <= 1")

    world = _users_world(seed, n_prompts, n_responses, n_scorers, n_users, dirichlet_alpha)
    rng = _np_rng(seed, 3)
    n_test, n_val = round(test_fraction * n_prompts), round(validation_fraction * n_prompts)
    split_of = {}
    for i, p in enumerate(rng.permutation(n_prompts)):
        split_of[int(p)] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    rows: list[dict] = []
    for p in range(n_prompts):
        texts = world["responses"][p]
        for u in sorted(rng.choice(n_users, size=users_per_prompt, replace=False)):
            utility = world["scores"][p] @ world["weights"][u]
            best, worst = int(np.argmax(utility)), int(np.argmin(utility))
            if texts[best] == texts[worst]:
                continue
            rows.append({"prompt": world["prompts"][p], "chosen": texts[best], "rejected": texts[worst],
                         "split": split_of[p], "user": f"u{int(u):02d}"})
    return rows


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

GENERATORS: dict[str, Callable[..., list[dict]]] = {"categories": categories, "attributes": attributes, "users": users}


def generate(name: str, seed: int, **params) -> list[dict]:
    """Run generator `name` with `seed` and keyword `params`, with clear errors for typos."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; available: {', '.join(GENERATORS)}")
    fn = GENERATORS[name]
    accepted = [p for p in inspect.signature(fn).parameters if p != "seed"]
    unknown = [p for p in params if p not in accepted]
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for generator {name!r}: {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    return fn(seed=seed, **params)
