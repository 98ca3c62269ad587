"""The training text: a deterministic sentence generator plus hand-written sentences.

Three sources, all written or generated here (nothing is downloaded):

* ``HAND_WRITTEN`` -- everyday sentences with the things a TTS front end must read: money,
  dates, times, percentages, phone numbers, abbreviations, questions and exclamations.
* a template grammar (``generate_templated``) over small hand-picked word lists, seeded, so
  the same seed always yields the same sentences;
* plain-prose sentences from the Python documentation that ships with the interpreter
  (``pydoc_data.topics``, PSF licence), filtered to letters, commas and a final period: a
  source of longer, natural sentences with a wide vocabulary.

``HELD_OUT`` is the test set: hand-written sentences that are never trained on (``build``
asserts that none of them, after normalisation, appears in train or validation). The
validation split is a seeded random sample of the rest.

Every sentence goes through the frontend's own ``normalize`` + ``split_sentences``, so the
student is trained on exactly the text the service will feed it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from services.frontend.normalize import normalize
from services.frontend.sentences import split_sentences

__all__ = [
    "HAND_WRITTEN",
    "HELD_OUT",
    "Corpus",
    "build_corpus",
    "generate_templated",
    "prose_sentences",
    "read_split",
]

# ---------------------------------------------------------------------------------------------
# The held-out test set: never trained on. Common words, so that an off-the-shelf recogniser
# with a general English language model can judge intelligibility fairly.
# ---------------------------------------------------------------------------------------------

HELD_OUT: tuple[str, ...] = (
    "The weather will be sunny and warm tomorrow afternoon.",
    "Please remember to buy milk, bread and eggs on your way home.",
    "It costs $3.50 at the corner shop.",
    "My brother moved to a small town near the coast last year.",
    "The train to Boston leaves at 7:45 in the morning.",
    "She read the whole book in one night.",
    "Dr. Smith will see you on March 3rd.",
    "We need about 25 chairs for the meeting room.",
    "Can you turn off the lights when you leave?",
    "The children played in the garden until it got dark.",
    "He called his mother every Sunday evening.",
    "Our team won the game by 2 points.",
    "The new road will open in the spring of 2026.",
    "I think the coffee is too hot to drink right now.",
    "Turn left at the second street and walk for 5 minutes.",
    "The price of gas went up by 10% this month.",
)

# ---------------------------------------------------------------------------------------------
# Hand-written training sentences.
# ---------------------------------------------------------------------------------------------

HAND_WRITTEN: tuple[str, ...] = (
    "Hello, and welcome to the show.",
    "Good morning! How did you sleep?",
    "Thank you very much for your help today.",
    "The package will arrive on Friday, January 12th.",
    "Your total comes to $42.17, including tax.",
    "The ticket costs $15, or $12 if you book online.",
    "She paid €30 for the scarf and £8 for the gloves.",
    "We raised $1,250 for the school library.",
    "The company earned $3.2 million last quarter.",
    "Call us at 555-867-5309 before 6 p.m.",
    "The office opens at 9:00 a.m. and closes at 5:30 p.m.",
    "The flight departs at 14:20 from gate 7.",
    "Meet me at 10:15 in front of the museum.",
    "The concert starts at 8 PM sharp.",
    "Mr. and Mrs. Johnson live on Oak St. near the park.",
    "Prof. Davis teaches chemistry at the university.",
    "St. Louis is a city on the Mississippi River.",
    "Please see Fig. 3 for details, e.g. the error bars.",
    "The U.S. and Canada share a very long border.",
    "NASA launched a new weather satellite last week.",
    "The FBI and the CIA are both federal agencies.",
    "I was born on 4/15/1987 in a small hospital.",
    "The deadline is 2024-06-30, so please hurry.",
    "The war ended in 1945.",
    "In the 1990s, few people owned a mobile phone.",
    "About 65% of the voters stayed at home.",
    "The temperature fell to -5 degrees overnight.",
    "It is 72°F outside, which is about 22°C.",
    "The box weighs 12 kg and is 80 cm wide.",
    "The car was going 55 mph on the highway.",
    "Add 2 cups of flour and 1.5 teaspoons of salt.",
    "Pi is roughly 3.14159.",
    "Chapter 11 begins on page 204.",
    "World War II changed the map of Europe.",
    "King Henry VIII had six wives.",
    "The score was 3-2 at half time.",
    "Read pages 10-20 before the next class.",
    "Version 2.4.1 fixes the login bug.",
    "He finished 1st, and his sister finished 2nd.",
    "The 21st century began in 2001.",
    "Our address is 1600 Pennsylvania Ave., Washington, DC.",
    "The meeting was moved to Tuesday, Oct. 5.",
    "Is it true that the store closes at noon on Sundays?",
    "What time does the last bus leave?",
    "Where did you park the car?",
    "Why is the sky blue during the day?",
    "Who left the door open?",
    "How much does a gallon of milk cost?",
    "Would you like some tea or coffee?",
    "Stop! Don't touch that wire!",
    "Wow, that was an amazing performance!",
    "Watch out, the floor is wet.",
    "I can't believe it's already December.",
    "We'll be there in about twenty minutes.",
    "They've never seen snow before.",
    'She said, "I will be back soon."',
    "The old man walked slowly along the quiet beach.",
    "A gentle breeze moved through the tall grass.",
    "The kitchen smelled of fresh bread and cinnamon.",
    "Thunder rumbled in the distance as the storm approached.",
    "The river was frozen solid for most of the winter.",
    "Birds were singing in the trees outside my window.",
    "The library is closed for repairs until further notice.",
    "Please keep your seat belt fastened at all times.",
    "The doctor asked him to breathe deeply and relax.",
    "Our neighbors adopted a puppy named Max.",
    "The museum has a large collection of ancient coins.",
    "He fixed the bicycle with a wrench and some patience.",
    "The soup needs a little more pepper.",
    "Every morning she jogs three miles around the lake.",
    "The judge listened carefully to both sides.",
    "A thick fog covered the harbor at dawn.",
    "The students cheered when the results were announced.",
    "My grandmother knits warm sweaters for the whole family.",
    "The engine made a strange noise and then stopped.",
    "We watched the fireworks from the rooftop.",
    "The recipe calls for butter, sugar, and three eggs.",
    "The hikers reached the summit just before sunset.",
    "This sentence contains every letter: the quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "How vexingly quick daft zebras jump.",
    "The five boxing wizards jump quickly.",
    "Sphinx of black quartz, judge my vow.",
    "The quiet zoo keeper measured the giraffe's height.",
    "Joyful voices echoed through the church.",
    "A thousand years is a long time for a castle to stand.",
    "Is this the right way to the station?",
    "Could you please speak a little louder?",
    "I'd like a window seat, if possible.",
    "The Wi-Fi password is written on the fridge.",
    "Mount Everest is 8,849 meters tall.",
    "The population grew from 1.2 million to 1.8 million.",
    "Apple, Google and Microsoft are large technology companies.",
    "Jr. high school students visited the zoo on Thursday.",
    "The recipe serves 4 to 6 people.",
    "The shop sells shoes, shirts, and hats at half price.",
    "Rain is expected on Saturday, with sunshine on Sunday.",
    "The vote passed with 51 in favor and 49 against.",
    "Turn the volume down, the baby is sleeping.",
    "Measure twice and cut once.",
    "Yesterday I found an old photograph in the attic.",
    "The pilot announced that we would land in ten minutes.",
    "Fresh vegetables are cheaper at the farmers market.",
    "Lightning struck the old oak tree behind the barn.",
    "Nobody knew where the treasure was hidden.",
    "The machine prints 120 pages per minute.",
    "We drove 300 miles on the first day of the trip.",
    "The game was postponed because of heavy rain.",
    "She whispered something, but I couldn't hear it.",
    "Several thousand people attended the parade.",
    "The bridge was built in 1932 and repaired in 1998.",
    "Open the window, it's very hot in here.",
    "The manager will call you back within 24 hours.",
    "It took us 2.5 hours to get through traffic.",
    "Our flight number is UA 872.",
    "The sale ends on the 31st of May.",
    "Snow fell quietly on the sleeping village.",
    "He enjoys jazz, reggae, and classical music.",
    "The treasure chest was full of gold and jewels.",
    "Usually the zoo opens at half past nine.",
    "The choir sang beautifully at the wedding.",
    "Thick smoke poured out of the chimney.",
    "The squirrel buried acorns under the leaves.",
    "A huge wave crashed against the rocks.",
    "That's the funniest joke I've heard all year!",
    "The thief escaped through the back door.",
    "The orchestra tuned their instruments before the show.",
    "Visitors must sign in at the front desk.",
    "Vitamins and minerals keep the body healthy.",
    "The shoemaker measured both of my feet.",
    "The vision of the future looked bright and hopeful.",
    "Three thin thieves thought a thousand thoughts.",
    "She sells seashells by the seashore.",
    "Unique New York, you know you need unique New York.",
    "Red lorry, yellow lorry.",
)

# ---------------------------------------------------------------------------------------------
# The template grammar.
# ---------------------------------------------------------------------------------------------

_NAMES = (
    "Anna", "Ben", "Carlos", "Diana", "Ethan", "Fatima", "George", "Hannah", "Ivan", "Julia",
    "Kevin", "Laura", "Mohammed", "Nora", "Oliver", "Priya", "Quentin", "Rachel", "Samuel",
    "Tara", "Victor", "Wendy", "Xavier", "Yvonne", "Zachary", "Grace", "Marcus", "Sophie",
    "Leo", "Chloe", "Jasmine", "Arthur", "Beatrice", "Hugo", "Ingrid", "Theodore",
)  # fmt: skip
_SURNAMES = (
    "Miller", "Garcia", "Chen", "Patel", "Brown", "Nguyen", "Walker", "Kowalski", "Okafor",
    "Larsen", "Rossi", "Fischer", "Murphy", "Thompson", "Alvarez", "Bishop", "Hughes",
)  # fmt: skip
_TITLES = ("Dr.", "Mr.", "Mrs.", "Ms.", "Prof.", "Capt.", "Sgt.")
_PLACES = (
    "the station", "the bakery", "the old harbor", "the hospital", "the market", "the village",
    "the mountains", "the museum", "the airport", "the garden", "the office", "the river",
    "the stadium", "the cathedral", "the factory", "the island", "the forest", "the library",
    "the pharmacy", "the theater", "the bridge", "the farm", "the desert", "the valley",
    "the castle", "the beach", "the hotel lobby", "the parking lot", "the post office",
    "the laboratory", "the kitchen", "the basement", "the playground", "the courthouse",
)  # fmt: skip
_CITIES = (
    "Chicago", "Denver", "Seattle", "Miami", "Houston", "Phoenix", "Atlanta", "Portland",
    "Dallas", "Toronto", "London", "Paris", "Berlin", "Tokyo", "Sydney", "Madrid", "Dublin",
    "Vienna", "Oslo", "Cairo", "Lisbon", "Nashville", "Philadelphia", "San Francisco",
)  # fmt: skip
# (singular, plural)
_NOUNS = (
    ("book", "books"), ("letter", "letters"), ("umbrella", "umbrellas"), ("bottle", "bottles"),
    ("ticket", "tickets"), ("painting", "paintings"), ("window", "windows"), ("key", "keys"),
    ("basket", "baskets"), ("camera", "cameras"), ("blanket", "blankets"), ("chair", "chairs"),
    ("candle", "candles"), ("guitar", "guitars"), ("jacket", "jackets"), ("map", "maps"),
    ("lamp", "lamps"), ("envelope", "envelopes"), ("violin", "violins"), ("sandwich",
    "sandwiches"), ("box", "boxes"), ("watch", "watches"), ("knife", "knives"), ("shelf",
    "shelves"), ("dish", "dishes"), ("puzzle", "puzzles"), ("helmet", "helmets"), ("mirror",
    "mirrors"), ("notebook", "notebooks"), ("pillow", "pillows"), ("telescope", "telescopes"),
    ("engine", "engines"), ("wallet", "wallets"), ("bicycle", "bicycles"), ("shovel",
    "shovels"), ("thermometer", "thermometers"), ("necklace", "necklaces"), ("pumpkin",
    "pumpkins"), ("battery", "batteries"), ("cushion", "cushions"), ("vase", "vases"),
    ("hammer", "hammers"), ("journal", "journals"), ("sweater", "sweaters"), ("zipper",
    "zippers"), ("feather", "feathers"), ("pearl", "pearls"), ("rope", "ropes"),
)  # fmt: skip
_ANIMALS = (
    ("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("rabbit", "rabbits"),
    ("owl", "owls"), ("fox", "foxes"), ("goose", "geese"), ("mouse", "mice"), ("sheep", "sheep"),
    ("wolf", "wolves"), ("squirrel", "squirrels"), ("turtle", "turtles"), ("parrot", "parrots"),
    ("deer", "deer"), ("bear", "bears"), ("duck", "ducks"), ("zebra", "zebras"),
    ("pigeon", "pigeons"), ("lobster", "lobsters"), ("butterfly", "butterflies"),
)  # fmt: skip
_FOODS = (
    "apples", "oranges", "potatoes", "tomatoes", "cookies", "noodles", "cherries", "peaches",
    "onions", "mushrooms", "carrots", "pancakes", "sausages", "strawberries", "walnuts",
    "lemons", "cucumbers", "grapes", "dumplings", "muffins", "pears", "olives", "bagels",
)  # fmt: skip
_ADJECTIVES = (
    "red", "heavy", "ancient", "shiny", "broken", "enormous", "tiny", "beautiful", "strange",
    "expensive", "cheap", "quiet", "noisy", "warm", "cold", "bright", "dark", "smooth",
    "rough", "fragile", "golden", "wooden", "purple", "elegant", "ugly", "famous", "useful",
    "mysterious", "delicate", "sturdy", "dusty", "fresh", "crooked", "polished", "enchanted",
    "gigantic", "ordinary", "peculiar", "yellow", "orange", "silver", "green", "lovely",
)  # fmt: skip
_STATES = (
    "tired", "happy", "worried", "excited", "surprised", "hungry", "nervous", "angry",
    "confused", "curious", "proud", "thirsty", "calm", "bored", "delighted", "anxious",
    "grateful", "jealous", "sleepy", "cheerful", "annoyed", "relieved",
)  # fmt: skip
_PROFESSIONS = (
    "teacher", "pilot", "farmer", "engineer", "nurse", "baker", "plumber", "lawyer",
    "journalist", "carpenter", "chef", "scientist", "mechanic", "firefighter", "librarian",
    "dentist", "gardener", "musician", "photographer", "architect", "electrician", "waiter",
)  # fmt: skip
# (base, past)
_VERBS = (
    ("carry", "carried"), ("find", "found"), ("buy", "bought"), ("sell", "sold"),
    ("paint", "painted"), ("borrow", "borrowed"), ("repair", "repaired"), ("hide", "hid"),
    ("throw", "threw"), ("catch", "caught"), ("wrap", "wrapped"), ("clean", "cleaned"),
    ("open", "opened"), ("lose", "lost"), ("break", "broke"), ("bring", "brought"),
    ("deliver", "delivered"), ("measure", "measured"), ("polish", "polished"),
    ("examine", "examined"), ("steal", "stole"), ("return", "returned"), ("weigh", "weighed"),
    ("choose", "chose"), ("describe", "described"), ("move", "moved"), ("push", "pushed"),
    ("pull", "pulled"), ("keep", "kept"), ("drop", "dropped"), ("search for", "searched for"),
    ("look at", "looked at"), ("forget", "forgot"), ("photograph", "photographed"),
)  # fmt: skip
_INTRANSITIVE = (
    "laughed", "smiled", "waited", "cried", "shouted", "disappeared", "slept", "danced",
    "whistled", "argued", "hesitated", "paused", "sighed", "trembled", "apologized",
    "shrugged", "nodded", "wandered off", "sat down", "stood up", "gave up", "woke up",
)  # fmt: skip
_ADVERBS = (
    "quickly", "slowly", "carefully", "quietly", "loudly", "suddenly", "gently", "eagerly",
    "happily", "nervously", "politely", "secretly", "proudly", "patiently", "reluctantly",
    "cheerfully", "barely", "finally", "immediately", "rarely",
)  # fmt: skip
_WHEN = (
    "yesterday", "this morning", "last night", "on Monday", "on Tuesday afternoon",
    "on Wednesday", "on Thursday evening", "on Friday", "over the weekend", "last summer",
    "two days ago", "after lunch", "before dinner", "at midnight", "in the spring",
    "during the winter", "a week ago", "earlier today", "this afternoon", "in October",
)  # fmt: skip
_FUTURE_WHEN = (
    "tomorrow", "next week", "on Saturday", "tonight", "next month", "in an hour",
    "after the meeting", "on Sunday morning", "later this year", "before noon",
)  # fmt: skip
_STORES = (
    "the grocery store", "the bookshop", "the hardware store", "the flea market", "the bakery",
    "the pharmacy", "the gas station", "the toy store", "the mall",
)  # fmt: skip
_UNITS = ("miles", "kilometers", "feet", "meters", "pounds", "kg", "hours", "minutes",
          "degrees", "inches", "liters", "gallons")  # fmt: skip
_STREETS = ("Maple", "Elm", "Cedar", "Pine", "Washington", "Lincoln", "Park", "Lake",
            "Highland", "River", "Sunset", "Church", "Mill", "Forest", "Spring")  # fmt: skip
_STREET_KINDS = ("St.", "Ave.", "Rd.", "Blvd.", "Lane", "Drive", "Street", "Avenue", "Road")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December", "Jan.", "Feb.", "Aug.", "Sept.",
           "Oct.", "Nov.", "Dec.")  # fmt: skip
_ACRONYMS = ("the FBI", "the BBC", "NASA", "the UN", "the EU", "IBM", "the NFL", "the CEO",
             "the IRS", "UNICEF", "the FDA", "the USA", "the UK", "the NBA", "the WHO")  # fmt: skip


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _money(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.4:
        return f"${r.randint(1, 99)}.{r.randint(0, 99):02d}"
    if kind < 0.7:
        return f"${r.choice((5, 10, 12, 20, 25, 40, 50, 75, 99, 100, 150, 250, 500))}"
    if kind < 0.85:
        return f"${r.randint(1, 9)},{r.randint(0, 999):03d}"
    return f"${r.randint(1, 30)} million"


def _time(r: random.Random) -> str:
    h, m = r.randint(1, 12), r.choice((0, 5, 10, 15, 20, 30, 40, 45, 50, 55, r.randint(1, 59)))
    suffix = r.choice(("", " a.m.", " p.m.", " AM", " PM"))
    return f"{h}:{m:02d}{suffix}" if m or not suffix else f"{h}{suffix}"


def _date(r: random.Random) -> str:
    month = r.choice(_MONTHS)
    day = r.randint(1, 28)
    style = r.random()
    if style < 0.35:
        return f"{month} {day}"
    if style < 0.6:
        return f"{month} {day}, {r.randint(1950, 2030)}"
    if style < 0.8:
        return f"{r.randint(1, 12)}/{day}/{r.randint(1990, 2030)}"
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd"}.get(day, "th")
    return f"{month} {day}{suffix}"


def _count(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.5:
        return str(r.randint(2, 20))
    if kind < 0.8:
        return str(r.randint(21, 999))
    return f"{r.randint(1, 99)},{r.randint(0, 999):03d}"


def _person(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.55:
        return r.choice(_NAMES)
    if kind < 0.75:
        return f"{r.choice(_TITLES)} {r.choice(_SURNAMES)}"
    if kind < 0.9:
        return f"the {r.choice(_PROFESSIONS)}"
    return f"my {r.choice(('sister', 'uncle', 'cousin', 'neighbor', 'friend', 'boss'))}"


def _thing(r: random.Random) -> str:
    noun = r.choice(_NOUNS)[0]
    return f"the {r.choice(_ADJECTIVES)} {noun}" if r.random() < 0.6 else f"the {noun}"


def _clause(r: random.Random) -> str:
    """A simple past-tense clause, the building block of most templates."""
    kind = r.randrange(6)
    who = _person(r)
    if kind == 0:
        return f"{who} {r.choice(_VERBS)[1]} {_thing(r)} {r.choice(_WHEN)}"
    if kind == 1:
        return f"{who} {r.choice(_ADVERBS)} {r.choice(_VERBS)[1]} {_thing(r)}"
    if kind == 2:
        return f"{who} {r.choice(_INTRANSITIVE)} {r.choice(_ADVERBS)}"
    if kind == 3:
        return f"{who} felt {r.choice(_STATES)} at {r.choice(_PLACES)}"
    if kind == 4:
        animal = r.choice(_ANIMALS)
        adj, action = r.choice(_ADJECTIVES), r.choice(_INTRANSITIVE)
        return f"the {adj} {animal[0]} {action} near {r.choice(_PLACES)}"
    return f"{who} left {_thing(r)} at {r.choice(_PLACES)}"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _template(r: random.Random) -> str:
    """One sentence from one of the templates, picked at random."""
    t = r.randrange(34)
    n, name, place = r.choice(_NOUNS), _person(r), r.choice(_PLACES)
    adj, verb, animal = r.choice(_ADJECTIVES), r.choice(_VERBS), r.choice(_ANIMALS)
    if t == 0:
        return _cap(_clause(r)) + "."
    if t == 1:
        return f"{_cap(_clause(r))}, but {_clause(r)}."
    if t == 2:
        return f"{_cap(_clause(r))} because {_clause(r)}."
    if t == 3:
        return f"When {_clause(r)}, {_clause(r)}."
    if t == 4:
        return f"Did {name} {verb[0]} {_thing(r)} {r.choice(_WHEN)}?"
    if t == 5:
        return f"Where did {name} put the {n[0]}?"
    if t == 6:
        return f"How many {n[1]} do we need for {place}?"
    if t == 7:
        return f"Why is the {n[0]} so {adj}?"
    if t == 8:
        return f"What a {adj} {n[0]}!"
    if t == 9:
        return f"Please {verb[0]} the {n[1]} {r.choice(_FUTURE_WHEN)}."
    if t == 10:
        return f"{_cap(name)} paid {_money(r)} for {_a(adj)} {n[0]} at {r.choice(_STORES)}."
    if t == 11:
        return f"The {n[0]} costs {_money(r)}, but the {r.choice(_NOUNS)[0]} costs {_money(r)}."
    if t == 12:
        return f"The meeting at {place} is on {_date(r)} at {_time(r)}."
    if t == 13:
        return f"{_cap(name)} was born on {_date(r)} in {r.choice(_CITIES)}."
    if t == 14:
        return f"The train to {r.choice(_CITIES)} leaves at {_time(r)}."
    if t == 15:
        return f"We walked {r.randint(2, 30)} {r.choice(_UNITS)} to reach {place}."
    if t == 16:
        return f"About {r.randint(2, 99)}% of the {animal[1]} live near {place}."
    if t == 17:
        return (
            f"{r.choice(_TITLES)} {r.choice(_SURNAMES)} lives at {r.randint(2, 9999)} "
            f"{r.choice(_STREETS)} {r.choice(_STREET_KINDS)} in {r.choice(_CITIES)}."
        )
    if t == 18:
        area, exchange, line = r.randint(200, 999), r.randint(200, 999), r.randint(0, 9999)
        return f"Call {name} at {area}-{exchange}-{line:04d}."
    if t == 19:
        return f"There are {_count(r)} {n[1]} in the {r.choice(('box', 'room', 'shop', 'truck'))}."
    if t == 20:
        return f"The {animal[0]} ran across {place} and disappeared."
    if t == 21:
        return _cap(f"{r.choice(_ACRONYMS)} announced new rules {r.choice(_WHEN)}.")
    if t == 22:
        return f"The temperature in {r.choice(_CITIES)} reached {r.randint(-20, 105)} degrees."
    if t == 23:
        return f"I think the {n[0]} is too {adj} for {place}."
    if t == 24:
        return f"{_cap(name)} will {verb[0]} the {n[0]} {r.choice(_FUTURE_WHEN)}."
    if t == 25:
        return f"Have you ever seen {_a(adj)} {animal[0]} at {place}?"
    if t == 26:
        who, count, food = r.choice(_PROFESSIONS), _count(r), r.choice(_FOODS)
        return f"The {who} bought {count} {food} for {_money(r)}."
    if t == 27:
        return f"In {r.randint(1900, 2029)}, {_clause(r)}."
    if t == 28:
        return f"Chapter {r.randint(1, 40)} starts on page {r.randint(2, 600)}."
    if t == 29:
        return f"{_cap(name)} said that the {n[0]} was {adj} and {r.choice(_ADJECTIVES)}."
    if t == 30:
        hours = f"{r.randint(2, 12)}.{r.randint(1, 9)}"
        return f"It took {hours} hours to drive to {r.choice(_CITIES)}."
    if t == 31:
        food, other = r.choice(_FOODS), r.choice(_NOUNS)[0]
        return f"Put the {food} next to the {n[0]}, then {verb[0]} the {other}."
    if t == 32:
        room, floor = r.randint(100, 999), r.choice(("first", "second", "third", "fourth", "top"))
        return f"Room {room} is on the {floor} floor."
    return f"The {animal[1]} were {r.choice(_STATES)}, so {_clause(r)}."


def generate_templated(count: int, seed: int = 0) -> list[str]:
    """`count` distinct sentences from the template grammar; the same seed gives the same list."""
    r = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < count and attempts < count * 20:
        attempts += 1
        s = _template(r)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


_PROSE_RE = re.compile(r"[A-Z][A-Za-z ,']+\.")


def prose_sentences(limit: int, seed: int = 0) -> list[str]:
    """Up to `limit` plain prose sentences (6-22 words) from the bundled Python docs."""
    import pydoc_data.topics

    text = " ".join(
        " ".join(pydoc_data.topics.topics[k].split()) for k in sorted(pydoc_data.topics.topics)
    )
    found = sorted(
        {
            s
            for s in re.split(r"(?<=[.!?])\s+", text)
            if _PROSE_RE.fullmatch(s) and 6 <= len(s.split()) <= 22
        }
    )
    random.Random(seed).shuffle(found)
    return found[:limit]


def _prepare(raw: str) -> list[str]:
    """The frontend's text path: normalise, then split into sentences."""
    return split_sentences(normalize(raw))


@dataclass
class Corpus:
    """Normalised sentences per split."""

    train: list[str]
    val: list[str]
    test: list[str]

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for split in ("train", "val", "test"):
            lines = getattr(self, split)
            (out_dir / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_corpus(
    templated: int = 1400, prose: int = 350, val_fraction: float = 0.05, seed: int = 0
) -> Corpus:
    """Assemble and split the corpus. Held-out sentences never reach train or val."""
    raw = list(HAND_WRITTEN) + generate_templated(templated, seed) + prose_sentences(prose, seed)
    test = [s for raw_s in HELD_OUT for s in _prepare(raw_s)]
    banned = {s.lower() for s in test}
    seen: set[str] = set()
    sentences: list[str] = []
    for raw_s in raw:
        for s in _prepare(raw_s):
            key = s.lower()
            if key in seen or key in banned:
                continue
            seen.add(key)
            sentences.append(s)
    r = random.Random(seed + 1)
    order = list(range(len(sentences)))
    r.shuffle(order)
    n_val = max(1, round(len(sentences) * val_fraction))
    val_idx = set(order[:n_val])
    train = [s for i, s in enumerate(sentences) if i not in val_idx]
    val = [s for i, s in enumerate(sentences) if i in val_idx]
    assert not banned & {s.lower() for s in train + val}, "held-out sentence leaked"
    return Corpus(train=train, val=val, test=test)


def read_split(corpus_dir: Path, split: str) -> list[str]:
    """The sentences of one split, as written by `Corpus.write`."""
    path = corpus_dir / f"{split}.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
