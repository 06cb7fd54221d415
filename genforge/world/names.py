"""Word lists the tiny world is built from: names, places, trades, animals, things.

Plain data, no logic. Everything is fictional; a few names carry accents on purpose so that the
cleaning stage's Unicode normalisation has something real to do (NFC vs NFD spellings).
"""

FEMALE_NAMES = (
    "Mara", "Elsa", "Ivy", "Nora", "Lena", "Tessa", "Wren", "Greta", "Hilda", "Orla", "Maeve", "Petra",
    "Rosa", "Sabine", "Talia", "Una", "Vera", "Willa", "Yara", "Zelda", "Agnes", "Bea", "Cora", "Delia",
    "Edith", "Fern", "Gilda", "Hazel", "Isla", "Juno", "Kira", "Lotte", "Mina", "Nell", "Opal", "Pia",
    "Quinn", "Rhea", "Selma", "Thea", "Ada", "Briar", "Clover", "Dagny", "Elin", "Freya", "Renée", "Zoë",
    "Inès", "Chloé", "Linnea", "Marit", "Odile", "Posy", "Saffi", "Tilde", "Ulla", "Vesna", "Hedda", "Runa",
)

MALE_NAMES = (
    "Tobin", "Aldo", "Bram", "Cass", "Dario", "Emil", "Finn", "Gideon", "Hugo", "Ivo", "Jasper", "Kai",
    "Linus", "Milo", "Nico", "Oskar", "Pell", "Rafe", "Silas", "Theo", "Ulric", "Viggo", "Wendel", "Yorick",
    "Anselm", "Basil", "Cyril", "Dmitri", "Ewan", "Felix", "Gus", "Hector", "Ignatius", "Jonah", "Knut",
    "Lorcan", "Magnus", "Ned", "Otto", "Piet", "Rurik", "Stellan", "Tam", "Ambrose", "Joël", "Loïc",
    "Bertil", "Caspar", "Dorian", "Evander", "Fitz", "Halvard", "Idris", "Jory", "Kester", "Leif", "Mathis",
)

SURNAMES = (
    "Quill", "Marrow", "Thistle", "Reed", "Ashdown", "Bellweather", "Cobb", "Dunmore", "Eastwick", "Fairley",
    "Gorse", "Hollins", "Ivers", "Juniper", "Kettle", "Larkin", "Mossop", "Nettles", "Oakes", "Pennywhistle",
    "Quarry", "Rook", "Sorrel", "Tansy", "Underhill", "Vane", "Wick", "Yarrow", "Brindle", "Copperfield",
    "Drummond", "Elderberry", "Fennick", "Greaves", "Hartwell", "Inchley", "Jessop", "Kindle", "Lovage",
    "Mallow", "Northcote", "Orchard", "Pickering", "Ramsey", "Saltmarsh", "Tuttle", "Umber", "Vetch",
    "Whitlock", "Yeoman", "Birchall", "Crumb", "Dewberry", "Ember", "Foxley", "Gadsby", "Heron", "Ingram",
    "Jolley", "Knapp", "Lathe", "Merriweather", "Nook", "Ollerton", "Puddifoot", "Rushworth", "Stiles",
    "Thorne", "Upton", "Varley", "Wainwright", "Ashgrove", "Bramble", "Cresswell", "Doyle", "Fernsby",
    "Goodbody", "Hobb", "Lunt", "Mirkwood", "Pargeter", "Quayle", "Rivington", "Sackett", "Tollemache",
)

TOWN_PREFIXES = (
    "Ash", "Brindle", "Cold", "Dun", "Elm", "Fern", "Glen", "Hazel", "Iron", "Kettle", "Lark", "Mill",
    "North", "Oak", "Pebble", "Quarry", "Raven", "Salt", "Thorn", "Upper", "Wil", "Yew", "Amber", "Birch",
    "Clover", "Dew", "Eagle", "Fox", "Gold", "Heron", "Juniper", "Lantern", "Moss", "Nettle", "Otter",
)

TOWN_SUFFIXES = (
    "ford", "mere", "wick", "holm", "stead", "bury", "dale", "field", "haven", "moor", "brook", "ton",
    "combe", "ley", "worth", "gate",
)

RIVERS = (
    "Sill", "Wend", "Tarrow", "Maelin", "Orrin", "Brisk", "Calder", "Dove", "Esk", "Fenna", "Glimmer",
    "Hollow", "Isen", "Kell", "Lune", "Mire", "Nidd", "Ouse", "Pell", "Quell", "Rill", "Swale", "Tey",
    "Ure", "Vell", "Whin", "Yarra", "Allen", "Bray", "Coquet",
)

# job -> (what they do, where they work)
JOBS = {
    "baker": ("bakes bread and honey cakes", "bakery"),
    "potter": ("shapes clay into bowls and jugs", "pottery"),
    "weaver": ("weaves wool into blankets", "weaving shed"),
    "fisher": ("catches trout in the river", "harbour"),
    "carpenter": ("builds chairs, doors and boats", "workshop"),
    "teacher": ("teaches the village children to read and count", "school"),
    "miller": ("grinds wheat into flour", "mill"),
    "farmer": ("grows barley and keeps sheep", "farm"),
    "blacksmith": ("makes horseshoes and gate hinges", "forge"),
    "librarian": ("looks after old books and maps", "library"),
    "gardener": ("grows roses and runner beans", "garden"),
    "clockmaker": ("mends clocks and pocket watches", "clock shop"),
    "beekeeper": ("keeps bees and sells honey", "apiary"),
    "sailor": ("sails the river barges", "dock"),
    "tailor": ("sews coats and waistcoats", "tailor's shop"),
    "cook": ("cooks stews for the inn", "inn kitchen"),
    "painter": ("paints portraits and river scenes", "studio"),
    "doctor": ("looks after the sick", "clinic"),
    "shepherd": ("watches the flocks on the hills", "hillside"),
    "glassblower": ("blows glass into lamps and bottles", "glassworks"),
    "cobbler": ("mends boots and shoes", "cobbler's shop"),
    "brewer": ("brews cider and ale", "brewery"),
    "astronomer": ("watches the stars from a tower", "observatory"),
    "musician": ("plays the fiddle at weddings", "music hall"),
}

PETS = ("cat", "dog", "goat", "parrot", "tortoise", "rabbit", "owl", "hedgehog", "ferret", "pony", "duck",
        "canary", "lizard", "hamster", "donkey")

PET_NAMES = (
    "Pip", "Biscuit", "Clove", "Dumpling", "Ember", "Fig", "Gizmo", "Hopper", "Inky", "Jelly", "Kipper",
    "Lolly", "Mochi", "Nutmeg", "Olive", "Pepper", "Quince", "Radish", "Sprout", "Toffee", "Umber", "Waffle",
    "Yolk", "Ziggy", "Button", "Crumpet", "Doodle", "Fudge", "Maple", "Pickle", "Sage", "Truffle",
)

HOBBIES = (
    "playing chess", "collecting stamps", "sketching birds", "rowing on the river", "knitting scarves",
    "reading ghost stories", "baking pies", "growing tomatoes", "carving wood", "singing in the choir",
    "flying kites", "fishing at dawn", "pressing flowers", "writing poems", "building model boats",
    "walking in the hills", "playing the flute", "stargazing", "making jam", "solving riddles",
)

FOODS = ("plum pie", "barley soup", "apple fritters", "cheese scones", "pear tart", "onion bread",
         "mushroom stew", "ginger biscuits", "honey cake", "pea soup", "blackberry crumble", "fish pie")

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "grey", "brown", "white", "black")

OBJECT_KINDS = ("lantern", "clock", "harp", "map", "bell", "kettle", "compass", "quilt", "telescope",
                "music box", "globe", "sundial", "tapestry", "chessboard", "fiddle", "weathervane",
                "mirror", "spinning wheel", "rowing boat", "tea set")

OBJECT_ADJECTIVES = ("Silver", "Brass", "Painted", "Singing", "Crooked", "Golden", "Ancient", "Blue",
                     "Whispering", "Copper", "Ivory", "Little", "Great", "Starlit", "Patched", "Gilded")

MATERIALS = ("brass", "oak", "silver", "copper", "pine", "glass", "wool", "tin", "walnut", "iron")

KNOWN_FOR = ("its stone bridge", "its spring fair", "its cheese market", "its tall windmill",
             "its boat races", "its apple orchards", "its old library", "its glassworks", "its goose fair",
             "its painted houses", "its hot springs", "its clock tower", "its lavender fields",
             "its wool market", "its lantern festival", "its singing contest")

REGIONS = ("the Northern Hills", "the Green Valley", "the Salt Coast", "the Western Moors", "the Lake Country",
           "the Eastern Downs")

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")

ITEMS = ("apples", "pears", "eggs", "buttons", "marbles", "pebbles", "candles", "stamps", "shells",
         "biscuits", "acorns", "nails", "ribbons", "plums", "beads", "walnuts")

PLACES = ("market", "bridge", "library", "bakery", "harbour", "inn", "mill", "town square", "orchard",
          "music hall", "clock tower", "boathouse")

ACTIVITIES = ("pick apples", "row on the river", "play chess", "paint the old bridge", "fly kites",
              "bake pies", "practise the fiddle", "look at the stars", "mend the fence", "plant beans")
