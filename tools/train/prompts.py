#!/usr/bin/env python3
"""Deterministic, diverse user prompts for the teacher to answer.

    python3 tools/train/prompts.py --out prompts.jsonl [--seed 7]

Prompts are built from topic lists and question/instruction templates (no downloads), plus small talk
and follow-up turns. Each line is {"id": int, "split": "train"|"heldout"|"eval", "prompt": str,
"followup": str|null}. The split is fixed by a hash of the prompt text, so it does not depend on the
order or the number of prompts: "eval" (the 50 prompts of the teacher-scored evaluation, picked among
the held-out ones) and "heldout" (held-out perplexity) are never trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random

TOPICS = """
the sun|the moon|the ocean|rain|snow|clouds|volcanoes|earthquakes|rivers|mountains|deserts|forests|
the rainforest|coral reefs|the weather|seasons|rainbows|lightning|the stars|planets|Mars|Jupiter|
black holes|gravity|magnets|electricity|light|sound|heat|water|air|fire|ice|rocks|sand|soil|
dinosaurs|whales|dolphins|sharks|octopuses|elephants|lions|tigers|bears|wolves|foxes|rabbits|
cats|dogs|horses|cows|chickens|bees|ants|butterflies|spiders|birds|owls|penguins|frogs|snakes|
turtles|fish|trees|flowers|grass|mushrooms|seeds|fruit|vegetables|apples|bananas|oranges|bread|
rice|pasta|pizza|soup|salad|cheese|milk|eggs|coffee|tea|chocolate|cookies|cake|breakfast|lunch|
dinner|cooking|baking|gardening|farming|fishing|camping|hiking|swimming|running|cycling|football|
basketball|tennis|chess|music|the piano|the guitar|singing|dancing|painting|drawing|photography|
poetry|books|reading|writing|libraries|museums|movies|theater|history|ancient Egypt|the Romans|
castles|knights|pirates|explorers|maps|trains|cars|bicycles|airplanes|ships|rockets|bridges|
roads|cities|villages|houses|schools|teachers|students|homework|exams|friendship|family|
grandparents|birthdays|holidays|gifts|kindness|honesty|patience|courage|happiness|sadness|anger|
fear|sleep|dreams|exercise|health|doctors|hospitals|teeth|eyes|the heart|the brain|bones|muscles|
vitamins|germs|washing hands|computers|the internet|phones|robots|programming|Python|video games|
email|passwords|money|saving money|shopping|markets|jobs|work|time management|planning a trip|
packing a suitcase|learning a language|learning to swim|public speaking|making friends|moving house|
recycling|pollution|climate|energy|solar power|wind power|batteries|plastic|paper|glass|metal|
clocks|calendars|numbers|fractions|geometry|triangles|circles|measuring|weight|speed|the alphabet|
words|grammar|stories|fairy tales|jokes|riddles|puzzles|board games|toys|kites|boats|lighthouses|
islands|lakes|waterfalls|caves|the Arctic|Antarctica|Africa|Asia|Europe|South America|Australia|
Japan|Italy|France|Egypt|India|Canada|Brazil|a small town|the countryside|a busy street|a rainy day|
a sunny morning|a quiet evening|winter nights|spring|summer|autumn|a picnic|a birthday party|a zoo|
a farm|a bakery|a train station|an airport|the beach|a garden|a kitchen|a classroom|a hospital|a park
"""

QUESTION_TEMPLATES = [
    "What is {t}?",
    "Can you tell me about {t}?",
    "Why is {t} important?",
    "What are three interesting facts about {t}?",
    "Explain {t} to a child.",
    "How would you describe {t} in a few sentences?",
    "What should I know about {t}?",
    "Give me a short introduction to {t}.",
    "What do people usually think about {t}?",
    "Write a short paragraph about {t}.",
    "Write a short poem about {t}.",
    "Write a very short story about {t}.",
    "What is your favorite thing about {t}?",
    "How can I learn more about {t}?",
    "What are some fun activities related to {t}?",
    "List a few words that describe {t}.",
    "What is a common mistake people make about {t}?",
    "Describe {t} using simple words.",
    "What would a day without {t} be like?",
    "Tell me something surprising about {t}.",
    "What questions could a student ask about {t}?",
    "Write two sentences about {t}.",
    "How has {t} changed over time?",
    "What are the good and bad sides of {t}?",
    "Give me some tips about {t}.",
    "I want to write about {t}. Where should I start?",
    "Summarize what you know about {t} in one sentence.",
    "Why do some people like {t}?",
    "How are {t} and {u} different?",
    "What do {t} and {u} have in common?",
    "Write a short story about {t} and {u}.",
    "Can you compare {t} with {u}?",
]

SMALL_TALK = [
    "Hi!", "Hello!", "Hey there.", "Good morning!", "Good evening!", "How are you?",
    "How are you today?", "What's up?", "Who are you?", "What can you do?", "What is your name?",
    "Can you help me?", "Thank you!", "Thanks for your help.", "Tell me a joke.", "Tell me a fun fact.",
    "I'm bored. What should I do?", "I feel tired today.", "I'm happy today!", "I had a bad day.",
    "What is the meaning of life?", "Do you like music?", "What is a good book to read?",
    "Can you give me some advice?", "What should I eat for dinner?", "How do I make a cup of tea?",
    "How do I boil an egg?", "How can I sleep better?", "How do I stay focused?",
    "How can I be more productive?", "How do I make new friends?", "What is a healthy breakfast?",
    "Give me a motivational quote.", "Say something nice.", "What day comes after Monday?",
    "How many days are in a week?", "How many months are in a year?", "What color is the sky?",
    "What is two plus two?", "What is ten minus three?", "What is five times four?",
    "What is the capital of France?", "What is the capital of Japan?", "What is the capital of Italy?",
    "What is the largest ocean?", "What is the tallest animal?", "What do plants need to grow?",
    "Why is the sky blue?", "Why do leaves change color?", "Why do we need to sleep?",
    "How does a rainbow form?", "What is the biggest planet?", "How far is the moon?",
    "Good night!", "Goodbye!", "See you later.", "Can you write a haiku?", "Tell me a story.",
    "Write a short poem about friendship.", "What makes a good friend?", "What is kindness?",
    "Give me three ideas for a weekend.", "How do I say hello in Spanish?", "What is a noun?",
    "What is a verb?", "Spell the word 'apple'.", "What rhymes with cat?", "Count from one to five.",
    "Name three colors.", "Name three fruits.", "Name three animals that live in the sea.",
    "What is the opposite of hot?", "What is the opposite of big?", "Is a tomato a fruit?",
    "What is water made of?", "What is the boiling point of water?", "What do bees make?",
    "Where do penguins live?", "What do cows eat?", "How many legs does a spider have?",
]

FOLLOWUPS = [
    "Can you explain that more simply?", "Tell me more.", "Thanks! Can you give an example?",
    "Can you make it shorter?", "Why is that?", "That's interesting. What else?",
    "Can you say that in one sentence?", "Thank you!", "What do you mean?",
]


# v2: families of short, everyday questions with one clear answer, so the student sees each kind of
# fact asked many ways. Appended after the v1 prompts (whose ids, order and splits stay the same).
CAPITALS = """France:Paris|Japan:Tokyo|Italy:Rome|Germany:Berlin|Spain:Madrid|England:London|
the United Kingdom:London|the United States:Washington, D.C.|Canada:Ottawa|Mexico:Mexico City|
Brazil:Brasilia|Argentina:Buenos Aires|China:Beijing|India:New Delhi|Russia:Moscow|Egypt:Cairo|
Greece:Athens|Portugal:Lisbon|Ireland:Dublin|Norway:Oslo|Sweden:Stockholm|Finland:Helsinki|
Denmark:Copenhagen|Poland:Warsaw|Austria:Vienna|Belgium:Brussels|the Netherlands:Amsterdam|
Switzerland:Bern|Turkey:Ankara|Kenya:Nairobi|South Korea:Seoul|Thailand:Bangkok|Australia:Canberra|
New Zealand:Wellington|Peru:Lima|Chile:Santiago|Cuba:Havana|Hungary:Budapest|Iceland:Reykjavik"""

CAPITAL_TEMPLATES = [
    "What is the capital of {c}?", "What's the capital of {c}?", "Which city is the capital of {c}?",
    "Tell me the capital of {c}.", "What is the capital city of {c}?", "Do you know the capital of {c}?",
    "Name the capital of {c}.", "What city is the capital of {c}?", "capital of {c}?",
    "Is {x} the capital of {c}?", "Tell me about {x}, the capital of {c}.", "What is {x} known for?",
]

ANIMALS = """dogs|cats|cows|horses|pigs|sheep|goats|chickens|ducks|lions|tigers|bears|wolves|foxes|
rabbits|mice|elephants|giraffes|zebras|monkeys|gorillas|kangaroos|koalas|pandas|camels|deer|owls|
eagles|parrots|penguins|bees|ants|spiders|butterflies|frogs|snakes|turtles|crocodiles|sharks|whales|
dolphins|octopuses|crabs|goldfish|squirrels|bats|hedgehogs|polar bears|seals|hamsters"""

ANIMAL_TEMPLATES = [
    "What do {a} eat?", "Where do {a} live?", "How many legs do {a} have?", "What sound do {a} make?",
    "Are {a} mammals?", "How long do {a} live?", "Why do people like {a}?", "Tell me a fun fact about {a}.",
    "What do baby {a} look like?", "Can {a} swim?", "How big are {a}?", "Do {a} sleep at night?",
]

THINGS = """a banana|the sky|grass|snow|a tomato|a carrot|an apple|the sun|milk|coal|a lemon|an orange|
chocolate|the ocean|a strawberry|a fire truck|a school bus|blood|a cucumber|a pumpkin|the moon|
a flamingo|a crow|a polar bear|a frog|a cloud|a rose|a sunflower|a blueberry|an eggplant"""

THING_TEMPLATES = ["What color is {x}?", "What shape is {x}?", "Describe {x} in one sentence.",
                   "Is {x} big or small?", "Name something that has the same color as {x}."]

OBJECTS = """a hammer|scissors|a spoon|a fork|a knife|a pencil|a pen|an eraser|a ruler|a clock|a map|
a compass|a ladder|an umbrella|a broom|a bucket|a towel|soap|a toothbrush|a pillow|a blanket|a lamp|
a key|a lock|a wallet|a backpack|a camera|a microscope|a telescope|a thermometer|a calculator|
a keyboard|a mouse|a printer|a fridge|an oven|a kettle|a washing machine|a bicycle helmet|glasses|
a needle|a saw|a shovel|a rope|a tent|a flashlight|a battery|a magnet|a mirror|a candle"""

OBJECT_TEMPLATES = ["What is {x} used for?", "How do you use {x}?", "Why is {x} useful?",
                    "What is {x} made of?", "Who invented {x}?"]

ADJECTIVES = """hot|cold|big|small|fast|slow|happy|sad|old|new|young|tall|short|long|light|dark|heavy|
easy|hard|soft|loud|quiet|clean|dirty|full|empty|early|late|rich|poor|strong|weak|wet|dry|open|
closed|up|down|near|far|thick|thin|wide|narrow|high|low|cheap|expensive|first|last|inside|outside"""

WORDS = """happy|brave|curious|gentle|honest|patient|generous|polite|clever|lazy|busy|calm|friendly|
ancient|enormous|tiny|delicious|beautiful|strange|famous|fragile|rapid|silent|vivid|journey|
adventure|harvest|island|library|planet|machine|garden|market|weather|ocean|mountain|river|forest|
village|kitchen|breakfast|holiday|friendship|courage|knowledge|memory|science|history|energy|
pollution|recycle|imagine|explore|borrow|celebrate|describe|discover|improve|invent|protect|
whisper|wonder|yawn|gigantic|delighted|nervous|grateful|rescue|volunteer|habit|hobby|neighbor|
recipe|schedule|shadow|signal|climate|desert|echo|galaxy|insect|mammal|orbit|puzzle|rhythm"""

WORD_TEMPLATES = ["What does the word '{w}' mean?", "What does {w} mean?", "Use the word '{w}' in a sentence.",
                  "What is a synonym for '{w}'?", "Define {w}.", "Give me an example of the word '{w}'."]

TASKS = """make a sandwich|make pancakes|brew coffee|make a cup of tea|cook rice|boil pasta|bake cookies|
wash my hands|brush my teeth|tie my shoes|ride a bike|plant a tree|grow tomatoes|water plants|
clean my room|do laundry|iron a shirt|wash dishes|make my bed|save money|make a budget|write a letter|
write an email|write a poem|write a story|study for an exam|take notes|learn to code|learn Python|
learn a new word every day|read faster|remember things better|fall asleep faster|wake up early|
stay hydrated|start running|stretch|meditate|relax after work|make a friend|say thank you|
apologize to a friend|give a good presentation|prepare for a job interview|plan a birthday party|
pack for a trip|read a map|change a light bulb|fix a flat bicycle tire|take care of a puppy|
take care of a cat|feed a goldfish|draw a cat|fold a paper airplane|keep a journal|set a goal|
stop procrastinating|stay calm|be more patient|eat healthier|cook an egg|make a salad|make soup"""

TASK_TEMPLATES = ["How do I {x}?", "How can I {x}?", "What is the best way to {x}?",
                  "Give me simple steps to {x}.", "I want to {x}. Any tips?"]

PEOPLE = """Albert Einstein|Isaac Newton|William Shakespeare|Wolfgang Amadeus Mozart|Leonardo da Vinci|
Marie Curie|Charles Darwin|Galileo Galilei|Thomas Edison|Abraham Lincoln|George Washington|
Napoleon Bonaparte|Cleopatra|Julius Caesar|Christopher Columbus|Neil Armstrong|Ludwig van Beethoven|
Pablo Picasso|Vincent van Gogh|Jane Austen|Mahatma Gandhi|Nelson Mandela|Martin Luther King Jr.|
the Wright brothers|Alexander Graham Bell|Nikola Tesla|Florence Nightingale|Aristotle|Plato|Socrates"""

PEOPLE_TEMPLATES = ["Who was {p}?", "What is {p} famous for?", "Tell me about {p}.",
                    "Why is {p} important?", "When did {p} live?"]

# v2's short asks about each v1 topic (v3: about each of its topics too)
SHORT_TOPIC_TEMPLATES = ["Tell me about {t} in two sentences.", "What is one fact about {t}?",
                         "Why do people care about {t}?", "Explain {t} simply."]

SIMPLE = [
    "What is 1 + 1?", "What is 2 + 2?", "What is 3 + 3?", "What is 5 + 5?", "What is 10 + 10?",
    "What is 2 + 3?", "What is 4 + 4?", "What is 10 - 5?", "What is 2 times 3?", "What is 3 times 3?",
    "What is 10 times 10?", "What is half of 10?", "How many hours are in a day?",
    "How many minutes are in an hour?", "How many seconds are in a minute?", "How many days are in a year?",
    "How many weeks are in a year?", "How many continents are there?", "How many oceans are there?",
    "How many planets are in the solar system?", "What is the closest star to Earth?",
    "What planet do we live on?", "What is the largest planet?", "What is the smallest planet?",
    "What is the hottest planet?", "Which planet is called the red planet?", "What is the largest animal?",
    "What is the fastest land animal?", "What is the largest country?", "What is the longest river?",
    "What is the highest mountain?", "What is the largest desert?", "What is the largest continent?",
    "What language do people speak in France?", "What language do people speak in Spain?",
    "What language do people speak in Brazil?", "What language do people speak in Japan?",
    "What is the freezing point of water?", "What gas do plants take in?", "What gas do we breathe in?",
    "What is the chemical symbol for water?", "What is the opposite of day?", "What comes after Tuesday?",
    "What comes before Friday?", "What month comes after January?", "What is the first month of the year?",
    "What is the last month of the year?", "What season comes after winter?", "How many sides does a triangle have?",
    "How many sides does a square have?", "What shape is a ball?", "What do you call a baby dog?",
    "What do you call a baby cat?", "What do you call a baby cow?", "What do caterpillars turn into?",
    "What do we call frozen water?", "Where does rain come from?", "What makes thunder?",
    "Why do we have day and night?", "Why is the sea salty?", "Why do birds fly south for the winter?",
    "What is the sun made of?", "What is the moon?", "Is the sun a star?", "Can fish breathe air?",
    "Do plants need sunlight?", "What is photosynthesis?", "What is gravity?", "What is a computer?",
    "What is the internet?", "What is an email?", "What is a robot?", "What is AI?",
    "What is a language model?", "Are you a human?", "Are you a robot?", "Where do you run?",
    "Do you need the internet?", "What is your favorite color?", "Can you tell me a riddle?",
    "Can you tell me a short joke?", "Tell me something funny.", "Write a haiku about the sea.",
    "Write a haiku about autumn.", "Write a two-line poem about cats.", "Give me a fun fact about space.",
    "Give me a fun fact about the ocean.", "Give me a fun fact about animals.", "Say hello in French.",
    "How do you say thank you in Spanish?", "How do you say good morning in German?",
    "What is the plural of mouse?", "What is the plural of child?", "What is the past tense of run?",
    "What is the past tense of go?", "Is 'quickly' an adjective or an adverb?", "What is an adjective?",
    "What is a sentence?", "What is a paragraph?", "What is a question mark for?", "Thanks!",
    "Thank you so much!", "You're great.", "I love you.", "That's funny.", "OK.", "Yes.", "No.",
    "Hmm.", "Cool!", "Interesting.", "Bye!", "Goodbye, see you tomorrow.", "Hello, who am I talking to?",
    "Hi, how is your day?", "Good afternoon!", "What time is it?", "What is today's date?",
    "Can you remember our conversation?", "What are you good at?", "What can't you do?",
]


# v3: a second list of everyday topics (asked with the v1 templates and v2's short ones), more
# short questions with one clear answer, and more topic pairs. Appended after v2's prompts, whose ids,
# order and splits stay the same; topics already in TOPICS are skipped.
TOPICS_V3 = """
the Eiffel Tower|the Great Wall of China|the Amazon River|the Sahara|the Pacific Ocean|the human body|
the skeleton|the lungs|the stomach|the skin|vaccines|medicine|nurses|firefighters|police officers|
farmers|pilots|astronauts|scientists|artists|musicians|chefs|carpenters|engineers|the post office|
banks|supermarkets|restaurants|hotels|newspapers|radio|television|cameras|telescopes|microscopes|
satellites|the space station|the solar system|comets|asteroids|the Milky Way|tides|waves|wind|storms|
hurricanes|tornadoes|floods|fog|frost|temperature|atoms|cells|fossils|minerals|crystals|diamonds|gold|
iron|oil|nuclear power|engines|wheels|levers|electric cars|buses|subways|helicopters|submarines|
hot air balloons|traffic lights|compasses|calculators|smartphones|apps|social media|online safety|
artificial intelligence|math|multiplication|division|percentages|shapes|patterns|orchestras|drums|
violins|jazz|rock music|opera|ballet|sculpture|architecture|pottery|knitting|sewing|origami|
magic tricks|comics|cartoons|superheroes|dragons|the Olympics|soccer|baseball|skiing|skating|surfing|
yoga|gymnastics|marathons|teamwork|leadership|responsibility|respect|gratitude|forgiveness|curiosity|
creativity|imagination|confidence|stress|loneliness|boredom|laughter|manners|good habits|routines|
weekends|mornings|bedtime|sandwiches|noodles|sushi|tacos|curry|ice cream|honey|sugar|salt|spices|
juice|smoothies|barbecues|recipes|refrigerators|microwaves|vacuum cleaners|houseplants|cactus plants|
roses|sunflowers|oak trees|pine trees|leaves|roots|insects|ladybugs|mosquitoes|worms|snails|crabs|
jellyfish|seals|polar bears|giraffes|zebras|kangaroos|koalas|pandas|monkeys|parrots|eagles|pets|
veterinarians|zoos|aquariums|national parks|road trips|passports|languages|English|Spanish|Chinese|
sign language|letters|weddings|festivals|New Year|fireworks|parades|Halloween|summer vacation|
school lunches|universities|job interviews|budgets|voting|laws|rules|skyscrapers|tunnels|dams|
pyramids|temples|ancient Greece|the Vikings|the Middle Ages|inventions|the printing press|
the telephone|the light bulb|the wheel|time zones|the equator|the North Pole|continents|oceans|
countries|flags|maps of the world|mountains and hills|valleys|ponds|wetlands|jungles|savannas|
glaciers|icebergs|clouds and rain|the water cycle|the food chain|habitats|endangered animals|
nature|the environment|trash|composting|electric lights|candles|mirrors|shadows|colors|rainy days|
snowmen|sandcastles|playgrounds|swings|bicycles and helmets|skateboards|scooters|kites and wind|
piggy banks|allowance|chores|cleaning|laundry|cooking dinner|shopping lists|neighbors|communities|
volunteering|charity|sharing|helping others|saying sorry|telling the truth|listening|good questions
"""

SIMPLE_V3 = [
    "What is 6 + 7?", "What is 9 + 8?", "What is 12 - 4?", "What is 20 - 7?", "What is 4 times 5?",
    "What is 6 times 7?", "What is 100 divided by 10?", "What is half of 20?", "What is double 8?",
    "Is 7 an odd or even number?", "Is 10 an odd or even number?", "What number comes after 99?",
    "How many zeros are in one thousand?", "How many cents are in a dollar?", "How many eggs are in a dozen?",
    "How many years are in a century?", "How many legs does an insect have?", "How many legs does a dog have?",
    "How many wings does a bird have?", "How many wheels does a bicycle have?", "How many wheels does a car have?",
    "How many hours are in a week?", "How many days are in February?", "What season comes after summer?",
    "What season comes before spring?", "What month comes after March?", "What day comes before Sunday?",
    "What is the color of grass?", "What color are bananas?", "What color do you get by mixing blue and yellow?",
    "What color do you get by mixing red and white?", "What are the three primary colors?",
    "What is the largest bird?", "What is the smallest bird?", "Which animal is known as the king of the jungle?",
    "Which animal has a long trunk?", "Which animal has black and white stripes?", "What do pandas eat?",
    "What do rabbits eat?", "Where do polar bears live?", "What is a baby frog called?",
    "What is a baby sheep called?", "What is a baby horse called?", "What do bees collect from flowers?",
    "What is the hardest natural material?", "What metal is attracted to a magnet?",
    "What do we use to measure temperature?", "What do we use to see things far away?",
    "What organ pumps blood through the body?", "What organ do we use to think?",
    "How many teeth does an adult have?", "How many bones are in the human body?",
    "What do our lungs do?", "Why do we need to drink water?", "Why should we eat vegetables?",
    "Why do we brush our teeth?", "What is the main ingredient in bread?", "What is cheese made from?",
    "Where does milk come from?", "What is ice cream made of?", "What do you call a person who flies a plane?",
    "What does a doctor do?", "What does a teacher do?", "What does a firefighter do?", "What does a farmer grow?",
    "Who delivers letters?", "What is the capital of Australia?", "What is the capital of Canada?",
    "What is the capital of China?", "What is the capital of Russia?", "What is the capital of Spain?",
    "What is the capital of Germany?", "Which ocean is the largest?", "Which continent is Egypt in?",
    "Which continent is Brazil in?", "Which country has the most people?", "What is the longest river in Africa?",
    "Where is the Eiffel Tower?", "Where are the pyramids of Giza?", "What is the Great Wall of China?",
    "Who painted the Mona Lisa?", "Who wrote Romeo and Juliet?", "Who invented the light bulb?",
    "Who was the first person on the moon?", "What is the opposite of up?", "What is the opposite of wet?",
    "What is the opposite of heavy?", "What is the opposite of happy?", "What rhymes with dog?",
    "What rhymes with sun?", "What is the plural of goose?", "What is the plural of leaf?",
    "What is the past tense of eat?", "What is the past tense of see?", "What letter comes after B?",
    "How many letters are in the English alphabet?", "What is the first letter of the alphabet?",
    "What is a vowel?", "Name three vowels.", "Name three vegetables.", "Name three sports.",
    "Name three musical instruments.", "Name three things you find in a kitchen.", "Name three planets.",
    "Name the days of the week.", "Name the four seasons.", "Name three kinds of weather.",
    "Why do we wear coats in winter?", "Why do ice cubes melt?", "Why does the moon change shape?",
    "What causes the seasons?", "What is a shadow?", "Why do stars twinkle?", "What is an echo?",
    "What is a volcano?", "What is an island?", "What is a desert?", "What is a rainbow made of?",
]

def _items(block: str) -> list[str]:
    return [t.strip() for t in block.replace("\n", "").split("|") if t.strip()]


def topics() -> list[str]:
    return [t.strip() for t in TOPICS.replace("\n", "").split("|") if t.strip()]


def split_of(prompt: str) -> str:
    h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 1000
    if h < 8:
        return "eval"
    if h < 30:
        return "heldout"
    return "train"


def build(seed: int, n_pairs: int) -> list[dict]:
    rng = random.Random(seed)
    ts = topics()
    prompts: list[str] = []
    seen: set[str] = set()

    def add(p: str):
        if p not in seen:
            seen.add(p)
            prompts.append(p)

    for p in SMALL_TALK:
        add(p)
    single = [q for q in QUESTION_TEMPLATES if "{u}" not in q]
    pair = [q for q in QUESTION_TEMPLATES if "{u}" in q]
    for t in ts:
        for q in single:
            add(q.format(t=t))
    for _ in range(n_pairs):
        t, u = rng.sample(ts, 2)
        add(rng.choice(pair).format(t=t, u=u))
    rng.shuffle(prompts)
    out = []
    for i, p in enumerate(prompts):
        follow = rng.choice(FOLLOWUPS) if rng.random() < 0.2 else None
        out.append({"id": i, "split": split_of(p), "prompt": p, "followup": follow})
    # Later versions' families, each appended after the one before in a fixed order (shuffled by
    # its own generator); their "eval"-hash prompts join the held-out ones.
    seen2 = set(seen)
    family: list[str] = []

    def add2(p: str):
        if p not in seen2:
            seen2.add(p)
            family.append(p)

    def append_family(rng_: random.Random):
        rng_.shuffle(family)
        for p in family:
            split = split_of(p)
            follow = rng_.choice(FOLLOWUPS) if rng_.random() < 0.1 else None
            out.append({"id": len(out), "split": "heldout" if split == "eval" else split, "prompt": p,
                        "followup": follow})
        family.clear()

    # v2
    for pair_ in _items(CAPITALS):
        c, x = pair_.split(":")
        for q in CAPITAL_TEMPLATES:
            add2(q.format(c=c, x=x))
    for fam, tmpl, key in ((ANIMALS, ANIMAL_TEMPLATES, "a"), (THINGS, THING_TEMPLATES, "x"),
                           (OBJECTS, OBJECT_TEMPLATES, "x"), (WORDS, WORD_TEMPLATES, "w"),
                           (TASKS, TASK_TEMPLATES, "x"), (PEOPLE, PEOPLE_TEMPLATES, "p")):
        for item in _items(fam):
            for q in tmpl:
                add2(q.format(**{key: item}))
    for adj in _items(ADJECTIVES):
        add2(f"What is the opposite of {adj}?")
        add2(f"What is the opposite of '{adj}'?")
    for q in SIMPLE:
        add2(q)
    for t in ts:
        for q in SHORT_TOPIC_TEMPLATES:
            add2(q.format(t=t))
    append_family(random.Random(seed + 1))
    # v3
    ts3 = [t for t in _items(TOPICS_V3) if t not in set(ts)]
    for t in ts3:
        for q in single + SHORT_TOPIC_TEMPLATES:
            add2(q.format(t=t))
    for q in SIMPLE_V3:
        add2(q)
    rng3 = random.Random(seed + 2)
    both = ts + ts3
    for _ in range(n_pairs):
        t, u = rng3.sample(both, 2)
        add2(rng3.choice(pair).format(t=t, u=u))
    append_family(rng3)
    # the 50 eval prompts: the first 50 of split "eval" in a fixed order
    n_eval = 0
    for r in out:
        if r["split"] == "eval":
            n_eval += 1
            if n_eval > 50:
                r["split"] = "heldout"
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pairs", type=int, default=3000)
    a = ap.parse_args()
    rows = build(a.seed, a.pairs)
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "heldout", "eval")}
    print(f"{len(rows)} prompts: {counts}")


if __name__ == "__main__":
    main()
