"""A labelled set for PHI detection: sentences holding one identifier of a known category
(values are made up: reserved example domains, documentation IP ranges, test card numbers, numbers
outside assigned SSN ranges only where a test wants a miss), and sentences holding none, written to
look like PHI (versions, prices, order numbers, times, ranges). `bench/phi_recall.py` turns it into
the table in docs/policy.md; `test_phi_recall.py` keeps the numbers from slipping."""

from __future__ import annotations

POSITIVES: dict[str, list[str]] = {
    "ssn": [
        "bare 219550187 with no label",  # missed by design: nine digits alone are too common
        "His SSN is 219-55-0187.",
        "SSN: 219 55 0187",
        "social security 219550187 on file",
        "ssn 219.55.0187 per intake",
        "Patient 078-12-3456? No: 536-22-8410 is hers.",
        "SSN#: 401-58-2290",
        "Her number, 123-45-6780, was verified.",
        "Tax id 512.84.9921 for the claim.",
    ],
    "phone": [
        "call 415 8675309 soon",  # missed: 3-7 grouping
        "Call (415) 555-2671 tomorrow.",
        "Reach me at +14158675309.",
        "Mobile +1 415 867 5309 after six.",
        "phone: 4158675309",
        "Office 212.736.5000 ext 4",
        "Tel +44 20 7946 0958 (London).",
        "Ring +49 30 901820 in Berlin.",
        "Clinic line 1-800-275-2273.",
        "WhatsApp +91 98765 43210",
        "Our Tokyo desk: +81 3-1234-5678.",
        "Fax 650-253-0000 for records.",
        "Paris office +33 1 42 68 53 00",
    ],
    "email": [
        "jane at example dot org",  # missed: spelled-out address
        "Write to jane.doe@example.org today.",
        "cc: j_smith+lab@mail.example.com",
        "Reply to MARIA.LOPEZ@EXAMPLE.NET",
        "From: nurse7@ward.hospital.example.org",
        "Send results to a.b-c@example.co.uk.",
        "patient email is x99@example.io",
    ],
    "date": [
        "on the 4th of March, 2024",  # found through its "March, 2024"
        "Admitted on March 4, 2024 for observation.",
        "DOB 03/14/1961",
        "Discharged 2024-02-29.",
        "Seen 4 Mar 2024 in clinic.",
        "Surgery in Sept 2019.",
        "Born 14.03.1961 in Lyon.",
        "Follow-up on 12/31/23.",
        "Visit: Jan. 5th, 2023",
    ],
    "age_over_89": [
        "The patient is 93 years old.",
        "A woman aged 91 presented.",
        "age: 104",
        "He is 90-year-old? No: 97 yrs old.",
    ],
    "mrn": [
        "record 00482913 pulled",  # missed: no MRN/chart/patient label
        "Chart: MRN 00482913 reviewed.",
        "Medical record number: 5588213",
        "MRN#778812 transferred",
        "patient id 10044872 admitted",
    ],
    "health_plan_id": [
        "Medicare MBI 1EG4-TE5-MK73 on file.",
        "member id: XJH448812903",
        "Policy number 88-1120-3347 active.",
        "MBI 1EG4TE5MK73",
    ],
    "account_number": [
        "Card 4111 1111 1111 1111 was charged.",
        "Visa 4012888888881881 declined.",
        "Amex 3782 822463 10005 on file.",
        "Account number: 00123456789",
        "IBAN: DE89370400440532013000",
        "routing no 021000021",
    ],
    "license_number": [
        "Prescriber DEA AB1234563 signed.",
        "License number: D1234567",
        "passport no 533380006",
        "certificate #: RN-448812",
    ],
    "vehicle_id": [
        "VIN 1M8GDM9AXKP042788 registered.",
        "Vehicle 1HGCM82633A004352 towed.",
        "license plate: 7ABC123",
    ],
    "url": [
        "See https://portal.example.org/patients/8812 now.",
        "Images at http://pacs.example.com:8080/study?id=4.",
        "Visit www.example-clinic.org/records today.",
        "ftp://files.example.net/lab.csv has it",
    ],
    "ip_address": [
        "Logged in from 203.0.113.42 twice.",
        "Source 198.51.100.7 blocked.",
        "IPv6 2001:db8::8a2e:370:7334 seen",
        "gateway 192.0.2.1",
    ],
    "address": [
        "PO Box 4471, Springfield",  # missed: post-office boxes
        "She lives at 1600 Amphitheatre Parkway in town.",
        "Ship to 221 Baker Street, Apt 4.",
        "Home: 42 Elm Ave",
        "Office 350 Fifth Avenue Suite 300",
    ],
    "zip_code": [
        "Mountain View, CA 94043 area.",
        "Boston MA 02115-5000",
        "Austin, TX 78701",
    ],
    "name": [
        "Maria Lopez called back.",  # missed: a name without title or label needs a language model
        "Seen by Dr. Gregory House in clinic.",
        "Patient: Maria Lopez",
        "Mrs. Eleanor Rigby called.",
        "Next of kin: John Smith",
    ],
}

NEGATIVES: list[str] = [
    "Version 3.11.7 was released; build 2024 shipped.",
    "The invoice total was 1234.56 and order 123-456-7890 shipped.",
    "Room 000-12-3456 is a code, not an SSN; nor is 666-12-3456.",
    "Call 555-0123 or extension 42; ticket 12-345-6789.",
    "The year 2024 and the ratio 12:30:45 are fine.",
    "Card 4111 1111 1111 1112 fails its check digit.",
    "Meet me at the main street market.",
    "We may see 13/14/2024 in broken data.",
    "Dose 2.5 mg twice daily for 10 days.",
    "Blood pressure 120/80, pulse 72, temp 98.6.",
    "Take 1-2 tablets every 4-6 hours.",
    "The range 100-200-300 is a step pattern.",
    "Lot number 4471-2231 expires soon.",
    "Order #998877665 ships Tuesday.",
    "Pi is 3.14159265358979.",
    "Score 9 out of 10; rank 3 of 5.",
    "The 1990s and 2000s were different.",
    "ISBN 978-3-16-148410-0 is a book.",
    "Tracking 1Z999AA10123456784 in transit.",
    "Coordinates 37.4220, -122.0841 are a place, not a person.",
    "He ran 5 km in 25:13.",
    "Model GPT-4 and llama-3.1-8b were compared.",
    "Use port 8080 and timeout 30.",
    "Temperature rose by 0.9 degrees.",
    "Revenue grew 12.5% to 4.2 billion.",
    "Chapter 12, section 3.4.1 covers it.",
    "Serial printed as 00-11-22-33-44.",
    "The 3 patients were 45, 52 and 67 years old.",
    "The code 200 means OK; 404 not found.",
    "Page 123 456 7890 is not a phone, just pages.",
]

PRESIDIO = {
    "ssn": ("UsSsnRecognizer", "US_SSN"),
    "phone": ("PhoneRecognizer", "PHONE_NUMBER"),
    "email": ("EmailRecognizer", "EMAIL_ADDRESS"),
    "date": ("DateRecognizer", "DATE_TIME"),
    "account_number": ("CreditCardRecognizer", "CREDIT_CARD"),
    "license_number": ("MedicalLicenseRecognizer", "MEDICAL_LICENSE"),
    "url": ("UrlRecognizer", "URL"),
    "ip_address": ("IpRecognizer", "IP_ADDRESS"),
}
"""Microsoft Presidio's pattern recognizers for the categories they cover (no NLP model needed)."""
